"""Which CLIP text model a command loads `--weights` with (predict, export, eval).

A slim file written by `worldtune slim --no-text-tower` stores the embeddings of its run's class
texts: asked for exactly those, in their order, a command needs no CLIP model; other texts do.
"""


def chosen_text_model(text_model: str | None, weights: str, texts: list[str] | None) -> str | None:
    """The CLIP text model to load `weights` with: `text_model` when given (--text-model), else none
    for a slim file that stores the embeddings of the class texts asked for (`texts`, or None: the
    file's own), else the default, openai/clip-vit-base-patch32."""
    from worldtune.engine.checkpoint import stored_vocabulary
    from worldtune.model.loading import DEFAULT_TEXT_MODEL

    if text_model is not None:
        return text_model
    stored = stored_vocabulary(weights)
    return None if stored is not None and texts in (None, stored) else DEFAULT_TEXT_MODEL


def load_model_for(weights: str, variant: str | None, device, text_model: str | None, texts: list[str] | None,
                   own_texts_hint: str, allow_hash_mismatch: bool = False):
    """`load_model` with `chosen_text_model`. Where the text model cannot be had for a slim file that
    stores its own class texts' embeddings, the error says that those need none (`own_texts_hint`:
    how the command is given them) and that other texts need the run's CLIP model, by --text-model."""
    from worldtune.engine.checkpoint import stored_vocabulary
    from worldtune.model.loading import load_model
    from worldtune.model.text_encoder import TextModelUnavailableError

    try:
        return load_model(weights, variant=variant, device=device, allow_hash_mismatch=allow_hash_mismatch,
                          text_model=chosen_text_model(text_model, weights, texts))
    except TextModelUnavailableError as err:
        stored = stored_vocabulary(weights)
        if stored is None:
            raise
        raise TextModelUnavailableError(
            f"{err}\n{weights} stores the embeddings of its own {len(stored)} class texts only, which need no "
            f"CLIP model ({own_texts_hint}); other class texts need a CLIP text tower: give the one the run "
            "was trained with, --text-model HUB_ID_OR_FOLDER") from None
