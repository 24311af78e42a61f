"""Build a ready-to-use model from a checkpoint (official `.pth`, worldtune checkpoint, zoo name) or a variant."""
import warnings
from pathlib import Path

import torch

from worldtune.model import VARIANTS, build_model
from worldtune.model.detector import YOLOWorld

DEFAULT_TEXT_MODEL = "openai/clip-vit-base-patch32"
TEXT_PREFIX = "backbone.text_model."

# stem output channels -> variant (the stem width differs for every size)
_STEM_TO_VARIANT = {16: "n", 32: "s", 48: "m", 64: "l", 80: "x", 96: "xl"}


def infer_variant(state_dict: dict) -> str:
    """Recognise the variant from the weights: stem width gives the size, missing guide_fc the efficient neck."""
    stem = state_dict.get("backbone.image_model.stem.conv.weight")
    if stem is None or stem.shape[0] not in _STEM_TO_VARIANT:
        raise ValueError("cannot recognise the model variant: the weights have no known "
                         "'backbone.image_model.stem.conv.weight'; pass the variant (--variant, or variant=...)")
    variant = _STEM_TO_VARIANT[stem.shape[0]]
    if variant == "l" and "neck.top_down_layers.0.attn_block.guide_fc.weight" not in state_dict:
        variant = "l_efficient_neck"
    return variant


def other_layout_note(state_dict: dict) -> str | None:
    """Why weights of a known non-v2 layout cannot fit a worldtune model, or None: the plain key list
    of a mismatch does not tell a user they hold a v1 or a reparameterised checkpoint."""
    head = "bbox_head.head_module.cls_contrasts.0."
    if any(k.startswith("neck.text_enhancer.") for k in state_dict):
        return ("these are YOLO-World v1 weights (dual VL-PAN with image-pooling attention, "
                "neck.text_enhancer.*); worldtune builds the v2 models, which have none")
    if head + "conv.weight" in state_dict:
        return ("these are reparameterised weights (the official 'rep' layout: a fixed vocabulary folded "
                "into 1x1 convolutions, no text tower); worldtune loads the weights before folding "
                "(the released v2 .pth files) and folds a vocabulary itself in `worldtune export`")
    if head + "logit_scale" in state_dict and head + "norm.weight" not in state_dict:
        return ("these weights have the contrastive head without BatchNorm (YOLO-World v1); worldtune "
                "builds the v2 models with the BN head (use_bn_head=True)")
    return None


def cls_width(state_dict: dict) -> int:
    """The head's classification hidden width, max(C0, min(num_classes, 100)), read off the weights.

    Passed as `num_classes` it rebuilds the same head: a model trained with a small vocabulary
    (e.g. 5 classes) has a narrower head than the default 80."""
    weight = state_dict.get("bbox_head.head_module.cls_preds.0.0.conv.weight")
    return int(weight.shape[0]) if weight is not None else 80


def check_image_shapes(state_dict: dict, variant: str, path) -> None:
    """Refuse weights of which an image-side tensor has another shape than in a `variant` model
    (another variant's weights, a hand-edited file), in one line: `path`, the first mismatching key
    and both shapes. The model is built on the meta device (no memory, no initialisation); the text
    tower's keys are left out, its shape being whatever the weights say (`text_tower_shape`).

    Raises:
        CheckpointMismatchError.
    """
    from worldtune.engine.checkpoint import CheckpointMismatchError, shape_mismatch

    try:
        with torch.device("meta"):
            expected = build_model(variant, None, num_classes=cls_width(state_dict)).state_dict()
    except ValueError as err:  # an unknown variant name
        raise ValueError(f"{path}: {err}") from None
    mismatched = [(k, v.shape, expected[k].shape) for k, v in state_dict.items()
                  if k in expected and v.shape != expected[k].shape]
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointMismatchError(f"{path}: its weights do not fit a '{variant}' model: "
                                      f"{shape_mismatch(*mismatched[0])}{more}")


def text_tower_shape(state_dict: dict) -> dict:
    """CLIP text tower sizes read off checkpoint weights (heads by CLIP's 64-wide convention)."""
    p = TEXT_PREFIX + "model.text_model."
    hidden = state_dict[p + "embeddings.token_embedding.weight"].shape[1]
    layers = len({k.split(".")[6] for k in state_dict if k.startswith(p + "encoder.layers.")})
    return {"hidden_size": hidden, "num_layers": layers, "num_heads": max(hidden // 64, 1),
            "intermediate_size": state_dict[p + "encoder.layers.0.mlp.fc1.weight"].shape[0],
            "projection_dim": state_dict[TEXT_PREFIX + "model.text_projection.weight"].shape[0]}


def build_text_model(name: str, seed: int = 0, weights: dict | None = None, num_heads: int | None = None):
    """CLIP text tower: a hub id or local folder, or "random" (ViT-B/32-shaped, random weights, with
    the tokenizer shipped in the package) for offline demos and tests.

    `weights`: the state_dict that will fill the tower afterwards (start weights, a resumed run, a
    checkpoint to predict with). When it carries the tower's weights, as official and worldtune
    checkpoints do, the tower is built in their shape and only the tokenizer is looked up (it ships
    with worldtune for the official ids), so no download is needed. When it carries all of them,
    the tower is not initialised (`text_encoder.build_tower`), and a local folder gives only its
    config.json and tokenizer (where the checkpoint lacks some, the folder's own weights stand).
    `num_heads`: the tower's head count when known (worldtune checkpoints record it), else CLIP's
    64-wide heads are assumed. Random initial weights come from `seed` and leave the global random
    stream alone.
    """
    from worldtune.model.text_encoder import (BUNDLED_TOKENIZER_DIR, CLIPTextEncoder, clip_text_config, fills_tower,
                                              load_folder_config)

    tokenizer = str(BUNDLED_TOKENIZER_DIR) if name == "random" else name
    inner = TEXT_PREFIX + "model."
    filled = {k[len(inner):]: v.shape for k, v in (weights or {}).items() if k.startswith(inner)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if filled and (Path(name) / "config.json").is_file():
            config = load_folder_config(name)
            if fills_tower(config, filled):
                return CLIPTextEncoder.from_config(tokenizer_dir=tokenizer, config=config, empty=True, name=name)
            # else the folder's own weights stand where the checkpoint has none
        elif filled:
            shape = text_tower_shape(weights)
            shape["num_heads"] = num_heads or shape["num_heads"]
            config = clip_text_config(**shape)
            return CLIPTextEncoder.from_config(tokenizer_dir=tokenizer, config=config,
                                               empty=fills_tower(config, filled))
        if name == "random":
            return CLIPTextEncoder.from_config(tokenizer_dir=tokenizer)
    return CLIPTextEncoder.from_pretrained(name)


def checked_device(device) -> torch.device:
    """`device` (a string or torch.device) as a torch.device, or a one-line ValueError naming it:
    an unknown name, or CUDA where there is none (torch's own error comes from deep in `.to()`)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device: use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def load_model(weights: str | Path | None = None, variant: str | None = None,
               text_model: str | None = DEFAULT_TEXT_MODEL, device: str | torch.device = "cpu",
               strict: bool = True, allow_hash_mismatch: bool = False) -> YOLOWorld:
    """A YOLO-World model with weights and a text tower, in eval mode.

    Args:
        weights: path to an official `.pth` / worldtune checkpoint / safetensors file, a zoo name or
            alias (see `worldtune zoo`), or None / "none" for random initialisation of `variant`.
        variant: a key of VARIANTS; inferred from the weights when omitted.
        text_model: Hugging Face id or local folder of the CLIP text model (its tokenizer is always
            needed; its weights only when the checkpoint carries none, its config when it is a local
            folder), "random" (the bundled tokenizer, random weights where the checkpoint has none),
            or None: no text tower (a slim file's stored class-text embeddings are then its
            vocabulary's; with a tower its class texts are encoded afresh).
        strict: refuse weights that do not match the model exactly (listing the differences).
    The returned model has `trained_imgsz`: the training image size saved in a worldtune
    checkpoint's config, or None (official files, random weights), and `trained_category_ids`: the
    training file's category id of each class text of the checkpoint's vocabulary, or [] (official
    files, random weights, checkpoints written before worldtune recorded them).
    """
    from worldtune.engine.checkpoint import (CheckpointMismatchError, extract_model_state, load_checkpoint_file,
                                             load_model_state)

    device = checked_device(device)
    if text_model is not None:
        if not isinstance(text_model, (str, Path)) or not str(text_model):
            raise TypeError("text_model must be a CLIP hub id or local folder, 'random', or None (no text tower), "
                            f"got {text_model!r}")
        text_model = str(text_model)  # a pathlib.Path folder too
    if weights is None or str(weights).lower() == "none":
        if variant is None:
            raise ValueError("no weights given: name a variant (one of " + ", ".join(VARIANTS) + ")")
        tower = build_text_model(text_model) if text_model else None
        model = build_model(variant, tower).to(device).eval()
        model.trained_imgsz, model.trained_category_ids = None, []
        return model

    from worldtune.zoo import resolve_weights

    path = resolve_weights(str(weights), allow_hash_mismatch=allow_hash_mismatch)
    # mapped: a training checkpoint's optimizer state and raw weights are never read
    checkpoint = load_checkpoint_file(path, mmap=True)
    state = extract_model_state(checkpoint, source=path)
    config = (checkpoint.get("config") or {}) if isinstance(checkpoint, dict) else {}
    saved_variant = config.get("model", {}).get("variant")
    try:
        variant = variant or saved_variant or infer_variant(state)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    has_text = any(k.startswith(TEXT_PREFIX) for k in state)
    saved_tower = config.get("model", {}).get("text_model")
    if (not has_text and text_model == DEFAULT_TEXT_MODEL and isinstance(saved_tower, str)
            and Path(saved_tower).is_dir()):
        text_model = saved_tower  # a file without its tower (slim --no-text-tower): the run's own local CLIP folder
    if not has_text and text_model == "random":
        warnings.warn(f"{path} carries no text tower, so text_model='random' gives one with random weights: its "
                      "text embeddings, and so the detections, mean nothing; pass the CLIP model (hub id or local "
                      "folder) the weights were trained with", stacklevel=2)
    if text_model is None:
        tower = None
        state = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
    else:
        heads = (checkpoint.get("text_tower") or {}).get("num_heads") if isinstance(checkpoint, dict) else None
        tower = build_text_model(text_model, weights=state, num_heads=heads)
    model = build_model(variant, tower, num_classes=cls_width(state))
    if not has_text and tower is not None:
        # The tower's own pretrained weights stand; the checkpoint covers the image side only.
        state = {**{TEXT_PREFIX + k: v for k, v in tower.state_dict().items()}, **state}
    try:
        load_model_state(model, state, strict=strict, path=path)
    except CheckpointMismatchError as e:
        note = other_layout_note(state)
        raise CheckpointMismatchError(f"{e}\n{note}" if note else str(e)) from None
    vocabulary = checkpoint.get("vocabulary") if isinstance(checkpoint, dict) else None
    model = model.to(device).eval()
    # worldtune checkpoints carry their config: the CLIs default --imgsz to the training size
    model.trained_imgsz = config.get("data", {}).get("imgsz")
    # the training file's category id of each vocabulary entry (a run's checkpoint): `predict` writes them
    model.trained_category_ids = list(checkpoint.get("category_ids") or []) if isinstance(checkpoint, dict) else []
    feats = checkpoint.get("vocabulary_feats") if isinstance(checkpoint, dict) else None
    if vocabulary and tower is None and feats is not None:
        # a slim file without its tower stores the embeddings its tower gave (`worldtune slim`)
        try:
            model.set_vocabulary(list(vocabulary), feats)
        except ValueError as err:  # another width than the model's
            raise ValueError(f"{path}: its stored class-text embeddings do not fit: {err}") from None
    elif vocabulary:
        # names only, encoded at first use (a caller may set another vocabulary first), by the tower
        # even where the file stores embeddings too; without a tower, the caller gives the
        # embeddings (`YOLOWorld.vocabulary_feats` says how)
        model.vocabulary = list(vocabulary)
    return model
