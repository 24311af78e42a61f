"""Export to ONNX with the vocabulary folded into the weights (no text tower in the graph).

  worldtune export --weights v2-s-coco --classes "person,red car" --out person_car.onnx
  worldtune export --weights runs/my_run/best.pt --class-texts texts.json --nms --out det.onnx
  worldtune export --weights runs/my_run/best.pt --classes person --dynamic-vocab --out open.onnx

Input `images`: (B, 3, imgsz, imgsz) float32 RGB in [0, 1], letterboxed by the caller (long side
resized to imgsz, centred padding with 114). Outputs: `boxes` (B, N, 4) xyxy input pixels and
`scores` (B, N, K); with --nms `num_dets`, `boxes`, `scores`, `labels` padded to --max-det.
`<out stem>.vocab.json` records the class texts and shapes (plus `.vocab.npy` embeddings with
--dynamic-vocab, whose graph takes a second input `text_feats` (B, K, 512)).
"""
import argparse
import importlib.util
import sys
from pathlib import Path

from worldtune.cli.argtypes import image_size, output_file, positive_int, probability
from worldtune.cli.errors import report, user_errors
from worldtune.cli.predict import add_vocabulary_arguments, check_weights_bring_texts, read_vocabulary
from worldtune.cli.text_model_choice import chosen_text_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="checkpoint path, zoo name (see `worldtune zoo`) or 'none' (random, with --variant)")
    add_vocabulary_arguments(parser)
    parser.add_argument("--text-feats", type=Path,
                        help=".npy (K, 512) embeddings of the classes, instead of running the text tower")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="output format")
    parser.add_argument("--out", type=output_file, required=True, help="output .onnx file")
    parser.add_argument("--variant", help="model variant; inferred from the checkpoint when omitted")
    parser.add_argument("--text-model", default=None,
                        help="CLIP text tower: hub id or local folder, 'random' (tests), or 'none' with --text-feats "
                             "(default: openai/clip-vit-base-patch32; none for the class texts whose embeddings a "
                             "slim file stores)")
    parser.add_argument("--imgsz", type=image_size, default=None,
                        help="input size, a multiple of 32 (default: the checkpoint's training size, else 640)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size of the graph (see --dynamic-batch)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--dynamic-batch", action="store_true", help="free batch dimension")
    parser.add_argument("--dynamic-vocab", action="store_true",
                        help="text embeddings as a second input (the vocabulary can change after export)")
    parser.add_argument("--nms", action="store_true", help="score threshold + class-aware NMS in the graph")
    parser.add_argument("--score-thr", type=probability, default=0.25, help="with --nms")
    parser.add_argument("--iou-thr", type=probability, default=0.7, help="with --nms")
    parser.add_argument("--max-det", type=positive_int, default=300, help="with --nms: rows of the padded outputs")
    parser.add_argument("--simplify", action="store_true", help="run onnxsim when it is installed")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime vs PyTorch check on a test input")


def _load_text_feats(path: Path | None, texts: list[str], width: int):
    if path is None:
        return None
    import numpy as np
    import torch

    try:
        feats = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--text-feats {path}: cannot read a .npy array ({e})") from None
    if feats.ndim != 2 or feats.shape != (len(texts), width):
        raise ValueError(f"--text-feats {path} has shape {feats.shape}, expected ({len(texts)}, {width}): one "
                         f"{width}-d embedding per class of the vocabulary ({len(texts)} classes), in its order")
    return torch.from_numpy(np.asarray(feats, dtype=np.float32))


def run(args: argparse.Namespace) -> int:
    from worldtune.export.check import verify_onnx
    from worldtune.export.onnx import export_onnx
    from worldtune.model.loading import DEFAULT_TEXT_MODEL, load_model

    text_model = None if str(args.text_model).lower() == "none" else args.text_model
    if args.text_model is None and args.text_feats is not None:
        text_model = DEFAULT_TEXT_MODEL
    given = (("--score-thr", args.score_thr, 0.25), ("--iou-thr", args.iou_thr, 0.7), ("--max-det", args.max_det, 300))
    nms_only = [flag for flag, value, default in given if value != default]
    if nms_only and not args.nms:
        print(f"worldtune export: {', '.join(nms_only)} only take effect with --nms (the graph without it outputs "
              "every candidate box and its scores)", file=sys.stderr)
    if args.simplify and importlib.util.find_spec("onnxsim") is None:
        print("worldtune export: --simplify skipped, onnxsim is not installed (pip install onnxsim)", file=sys.stderr)
        args.simplify = False
    try:
        texts = read_vocabulary(args.classes, args.class_texts)
        feats_note = " (the class names are still needed with --text-feats: they label the outputs)"
        if texts is None:
            check_weights_bring_texts(args.weights, feats_note if args.text_feats else "")
        if args.text_model is None and args.text_feats is None:
            text_model = chosen_text_model(None, args.weights, texts)
        model = load_model(args.weights, variant=args.variant, text_model=text_model, device="cpu")
        if texts is None:
            texts = list(model.vocabulary)
        if not texts:
            raise ValueError("empty vocabulary: give --classes 'person,car' or --class-texts FILE"
                             + (feats_note if args.text_feats else ""))
        args.imgsz = args.imgsz or model.trained_imgsz or 640
        text_feats = _load_text_feats(args.text_feats, texts, model.vocab_feats.shape[1])
        if text_feats is None and model.text_model is None and texts == model.vocabulary and model.vocab_feats.numel():
            text_feats = model.vocab_feats  # a slim file's stored embeddings of its class texts
        if text_feats is None and model.text_model is None:
            raise ValueError("--text-model none needs --text-feats EMBEDDINGS.npy")
        info = export_onnx(model, texts, args.out, text_feats=text_feats, imgsz=args.imgsz, batch=args.batch,
                           opset=args.opset, dynamic_batch=args.dynamic_batch, dynamic_vocab=args.dynamic_vocab,
                           nms=args.nms, score_thr=args.score_thr, iou_thr=args.iou_thr, max_det=args.max_det,
                           simplify=args.simplify)
    except user_errors() as e:
        return report("export", e)
    classes = f"{len(texts)} class" + ("es" if len(texts) != 1 else "")
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, {classes}, "
          f"opset {args.opset}) and {args.out.parent / info['vocab_file']}")
    if not args.no_verify:
        try:
            diffs, detections = verify_onnx(model, texts, args.out, info, text_feats=text_feats)
        except ImportError:
            print("onnxruntime is not installed: verification skipped (pip install onnxruntime)")
            return 0
        # With NMS, the boxes are paired by label and score (tied detections may come out in either order)
        paired = diffs.pop("boxes_paired", None)
        worst = max(diffs[k] for k in (("scores", "num_dets", "boxes") if args.nms else ("boxes", "scores")))
        compared = ""
        if detections is not None:
            compared = f" ({detections} detections compared"
            if detections:
                compared += ", boxes and labels by pairing the same label and score"
            if paired is not None and paired < detections and diffs["boxes"] < float("inf"):
                compared += f", {detections - paired} of them tied in score with another, so not paired"
            compared += ")"
        print("onnxruntime vs PyTorch, largest difference (relative to max(1, |value|)): "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()) + compared)
        if detections == 0:
            print(f"note: the test photographs gave no detection above --score-thr {args.score_thr:g}, so only "
                  "the counts were compared; a lower --score-thr, or an export without --nms, checks the boxes")
        if worst > 1e-3:
            print(f"worldtune export: WARNING the exported graph differs from PyTorch by {worst:.2e}",
                  file=sys.stderr)
            return 1
    return 0
