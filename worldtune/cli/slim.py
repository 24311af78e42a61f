"""Write a checkpoint's inference weights alone, as safetensors, for shipping.

  worldtune slim runs/my_run/best.pt --out my_model.safetensors
  worldtune slim runs/my_run/best.pt --out my_model.safetensors --no-text-tower   # image side only

A training checkpoint holds the EMA weights, the raw weights, the optimizer state and the RNG
states. The file written here holds the EMA weights (what validation scored) and, as metadata, the
training config, class texts and text-tower shape: `predict`, `eval`, `export`, `--weights` and
`YOLOWorld.from_pretrained` read it like the checkpoint, without the pickle format. It cannot be
resumed from. With `--no-text-tower` the frozen CLIP tower is left out (most of a small model's
file); in its place the file stores the (K, 512) embeddings of the run's K class texts, computed
here with the checkpoint's own tower, so `predict` and `export` without --classes, `eval` whose class
texts are exactly those, in their order (all without --text-model), and `from_pretrained(file,
text_model=None)` need no CLIP model. Other class texts need the tower:
loading rebuilds it from the run's local CLIP folder if it names one that is still there, else from
`--text-model`, which must be the CLIP model the run started from for the same results (a tower,
when loaded, encodes the class texts afresh).
"""
import argparse
import json
import sys
from pathlib import Path

from worldtune.cli.argtypes import output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="a worldtune checkpoint (best.pt, last.pt) or another weights file")
    parser.add_argument("--out", type=output_file, required=True, help="the .safetensors file to write")
    parser.add_argument("--no-text-tower", action="store_true",
                        help="leave out the frozen CLIP text tower, storing its embeddings of the run's class texts "
                             "instead (for other texts, loading rebuilds it from the run's local CLIP folder, or from "
                             "--text-model)")


def slim_checkpoint(checkpoint: Path, out: Path, text_tower: bool = True) -> dict:
    """Write `checkpoint`'s EMA weights (and its config, class texts and tower shape as metadata)
    to the safetensors file `out`, atomically.

    Without the tower (`text_tower=False`, or a file that has none) the embeddings of the run's
    class texts are stored too (`VOCAB_FEATS_KEY`): encoded with the checkpoint's tower, or those
    the file already stores.

    Returns:
        {"tensors": count, "bytes": size of `out`, "dropped_text": tensors of the tower left out,
         "vocabulary_feats": the number of class texts whose embeddings are stored (0: none),
         "note": why they are not, or ""}.
    """
    from worldtune.engine.checkpoint import (VOCAB_FEATS_KEY, WEIGHTS_METADATA_KEY, extract_model_state,
                                             load_checkpoint_file, save_checkpoint_atomic)
    from worldtune.model.loading import TEXT_PREFIX, check_image_shapes, infer_variant

    ckpt = load_checkpoint_file(checkpoint, mmap=True)  # its optimizer state and raw weights stay on disk
    state = extract_model_state(ckpt, source=checkpoint)  # the EMA weights
    # Loading refuses a wrong-shaped tensor; refuse it here too rather than ship a file that cannot load.
    variant = (ckpt.get("config") or {}).get("model", {}).get("variant")
    try:
        variant = variant or infer_variant(state)
    except ValueError:
        raise ValueError(f"{checkpoint}: not the weights of a YOLO-World model (no known "
                         "'backbone.image_model.stem.conv.weight')") from None
    check_image_shapes(state, variant, checkpoint)
    # What a worldtune file says about its run; another file (an official .pth) passes its weights only.
    ours = isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("worldtune")
    meta = {key: ckpt[key] for key in ("config", "vocabulary", "category_ids", "text_tower", "epoch", "best_ap")
            if ours and key in ckpt}
    has_tower = any(k.startswith(TEXT_PREFIX) for k in state)
    feats, note = None, ""
    if meta.get("vocabulary") and not (text_tower and has_tower):
        if has_tower:
            feats, note = encode_vocabulary(ckpt, state, meta["vocabulary"], checkpoint)
        else:  # a slim file slimmed again: its stored embeddings, if any, stay
            feats = ckpt.get("vocabulary_feats")
    dropped = 0
    if not text_tower:
        kept = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
        dropped, state = len(state) - len(kept), kept
    if feats is not None:
        state = {**state, VOCAB_FEATS_KEY: feats}
    meta.update(format="worldtune-weights-1", source=Path(checkpoint).name)
    try:
        text = json.dumps(meta)
    except TypeError as err:  # a hand-edited checkpoint with arrays or tensors among these entries
        raise ValueError(f"{checkpoint}: its run information cannot be written as JSON metadata: {err}") from err
    save_checkpoint_atomic(state, out, metadata={WEIGHTS_METADATA_KEY: text})
    return {"tensors": len(state) - (feats is not None), "bytes": Path(out).stat().st_size, "dropped_text": dropped,
            "vocabulary_feats": 0 if feats is None else len(feats), "note": note}


def encode_vocabulary(ckpt: dict, state: dict, vocabulary: list[str], checkpoint: Path):
    """The (K, D) L2-normalised embeddings of the run's K class texts by the checkpoint's own tower,
    as `load_model` would compute them from `checkpoint` (its weights; the tokenizer and config of
    the run's CLIP model, `config.model.text_model`, whose OpenAI tokenizer ships with worldtune).

    Returns:
        (embeddings, "") or, where the run's tokenizer cannot be had (its local folder is gone, a
        hub id offline), (None, why).
    """
    from worldtune.model.loading import DEFAULT_TEXT_MODEL, TEXT_PREFIX, build_text_model
    from worldtune.model.text_encoder import TextModelUnavailableError

    name = (ckpt.get("config") or {}).get("model", {}).get("text_model")
    name = name if isinstance(name, str) and name else DEFAULT_TEXT_MODEL
    heads = (ckpt.get("text_tower") or {}).get("num_heads")
    try:
        tower = build_text_model(name, weights=state, num_heads=heads)
    except (TextModelUnavailableError, OSError) as err:
        return None, f"the run's CLIP tokenizer ({name}) is not available: {str(err).splitlines()[0]}"
    weights = {k[len(TEXT_PREFIX):]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    try:
        tower.load_state_dict(weights, strict=False)  # where a folder's config asks for more, its own weights stand
    except RuntimeError as err:  # a shape the folder's config does not have
        raise ValueError(f"{checkpoint}: its text tower does not fit the CLIP model {name}: "
                         f"{str(err).splitlines()[-1].strip()}") from None
    return tower.eval().encode_vocabulary(list(vocabulary)), ""


def run(args: argparse.Namespace) -> int:
    if args.out.suffix != ".safetensors":
        raise ValueError(f"--out {args.out}: name a .safetensors file")
    result = slim_checkpoint(args.checkpoint, args.out, text_tower=not args.no_text_tower)
    before = args.checkpoint.stat().st_size
    left_out = f"; text tower left out ({result['dropped_text']} tensors)" if result["dropped_text"] else ""
    count = result["vocabulary_feats"]
    stored = f"; with the embeddings of its {count} class texts" if count else ""
    print(f"wrote {args.out}: {result['tensors']} tensors, {result['bytes'] / 2**20:.1f} MiB "
          f"(from {before / 2**20:.1f} MiB){left_out}{stored}")
    if result["note"]:
        print(f"worldtune slim: its class texts' embeddings are not stored, so any vocabulary needs a CLIP "
              f"text model when loading: {result['note']}", file=sys.stderr)
    return 0
