"""COCO box AP of a detections file, or of a checkpoint run over a COCO-format image set.

  worldtune eval --detections results.json --ann instances_val2017.json [--json metrics.json] [--plot pr.png]
  worldtune eval --weights v2-l-coco --data-root data/coco [--out-detections dets.json]
  worldtune eval --weights runs/my_run/best.pt --ann val.json --images val/ --class-texts texts.json
  worldtune eval --weights light.safetensors --ann val.json --images val/   # slim --no-text-tower: no CLIP
                                                                            # model for the run's own texts
"""
import argparse
import json
import sys
from pathlib import Path

from worldtune.cli.argtypes import (DEVICE_HELP, add_threads_argument, image_size, non_negative_int, output_file,
                                    positive_int, set_threads, text_tower)
from worldtune.cli.text_model_choice import load_model_for
from worldtune.eval.coco_eval import BACKENDS, coco_evaluate, format_metrics, metrics_to_json
from worldtune.outputs import write_text, writing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to score (one of)")
    src.add_argument("--detections", type=Path, help="COCO results JSON [{image_id, category_id, bbox, score}]")
    src.add_argument("--weights", help="checkpoint path or zoo name (see `worldtune zoo`)")
    data = parser.add_argument_group("ground truth and images")
    data.add_argument("--ann", type=Path, help="COCO instances JSON (with --data-root: used instead of its "
                                               "annotations/instances_val2017.json)")
    data.add_argument("--images", type=Path, help="image folder, with --weights (with --data-root: used instead of "
                                                  "its val2017/)")
    data.add_argument("--data-root", type=Path,
                      help="COCO folder: annotations/instances_val2017.json and val2017/")
    data.add_argument("--class-texts", type=Path,
                      help="JSON list of synonym lists, or a text file (not .json) of one text per line; one per "
                           "category in id order (default: the category names)")
    data.add_argument("--on-bad-data", choices=("error", "skip"), default="error",
                      help="skip: drop bad annotations, and leave unreadable images (with their objects) out "
                           "of the scoring, reporting them; error: stop at the first problem, naming it")
    model = parser.add_argument_group("model (with --weights)")
    model.add_argument("--variant", help="model variant; inferred from the checkpoint when omitted")
    model.add_argument("--text-model", type=text_tower, default=None,
                       help="CLIP text tower: hub id or local folder (only its tokenizer when the checkpoint "
                            "carries the tower), or 'random' (tests) (default: openai/clip-vit-base-patch32; "
                            "none when the class texts evaluated are those whose embeddings a slim file stores)")
    model.add_argument("--imgsz", type=image_size, default=None,
                       help="network input size (default: the checkpoint's training size, else 640)")
    model.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    model.add_argument("--workers", type=non_negative_int, default=2, help="data-loading processes")
    model.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_threads_argument(model)
    model.add_argument("--allow-hash-mismatch", action="store_true",
                       help="accept a zoo file whose SHA-256 disagrees with its name")
    out = parser.add_argument_group("output")
    out.add_argument("--backend", choices=BACKENDS, default="faster", help="COCO matching implementation")
    out.add_argument("--json", type=output_file, help="write the metrics here")
    out.add_argument("--out-detections", type=output_file, help="write the model's COCO results JSON here")
    out.add_argument("--plot", type=output_file,
                     help="write a PNG here: precision-recall curves and the per-class AP, sorted")


def _gt_and_images(args) -> tuple:
    if args.data_root is not None:
        ann = args.ann or args.data_root / "annotations" / "instances_val2017.json"
        images = args.images or args.data_root / "val2017"
        return ann, images
    return args.ann, args.images


def _own_texts_hint(args, ann: Path, names: list[str]) -> str:
    """How to evaluate a slim file with the class texts whose embeddings it stores, which need no
    CLIP model; and how this evaluation's (`names`) differ from them. Said where a tower is wanted
    but cannot be had."""
    from worldtune.engine.checkpoint import stored_vocabulary

    given = "--class-texts" if args.class_texts is not None else f"the category names of {ann}"
    stored = stored_vocabulary(args.weights) or []
    if names == stored:
        return f"{given} are exactly those: leave out --text-model"
    if len(names) != len(stored):
        differ = f"{given} are {len(names)}"
    else:
        pairs = [f"{a!r} for {b!r}" for a, b in zip(names, stored) if a != b]
        differ = f"{given} differ: {', '.join(pairs[:3])}{', ...' if len(pairs) > 3 else ''}"
    return (f"evaluate with exactly those, in their order, as the annotation file's category names or by "
            f"--class-texts; {differ}")


def _score_model(args, ann: Path, images: Path) -> dict:
    from worldtune.data.coco import CocoDetection, warn_image_file_problems
    from worldtune.data.loader import build_eval_loader
    from worldtune.data.presets import build_eval_dataset
    from worldtune.engine.dist import resolve_device
    from worldtune.eval.evaluate import evaluate_model

    if images is None:
        raise ValueError("--weights needs --images DIR (or --data-root)")
    device = resolve_device(args.device)
    dataset = CocoDetection(ann, images, class_texts=args.class_texts, on_bad_data=args.on_bad_data)
    warn_image_file_problems(dataset, "the evaluation")  # said before the model loads, not when met
    model = load_model_for(args.weights, args.variant, device, args.text_model, dataset.class_names,
                           _own_texts_hint(args, ann, dataset.class_names),
                           allow_hash_mismatch=args.allow_hash_mismatch)
    imgsz = args.imgsz or model.trained_imgsz or 640  # both checked already: parsing, the checkpoint reader
    print(f"evaluating at image size {imgsz}", file=sys.stderr)
    trained = list(getattr(model, "vocabulary", []))  # a worldtune run's class texts
    if args.class_texts is None and trained and len(trained) != len(dataset.class_names):
        print(f"note: the checkpoint was trained on {len(trained)} classes ({', '.join(map(repr, trained[:5]))}"
              f"{', ...' if len(trained) > 5 else ''}), {ann} has {len(dataset.class_names)}: scored with its "
              "category names", file=sys.stderr)
    elif args.class_texts is None and trained and trained != dataset.class_names:
        pairs = [f"{a!r} for {b!r}" for a, b in zip(trained, dataset.class_names) if a != b]
        print(f"note: the checkpoint was trained with other class texts ({', '.join(pairs[:3])}"
              f"{', ...' if len(pairs) > 3 else ''}); these are scored with the annotation's category names. "
              "To score as its validation did, pass --class-texts with the run's file", file=sys.stderr)
    loader = build_eval_loader(build_eval_dataset(dataset, imgsz=imgsz), batch_size=args.batch_size,
                               workers=args.workers)
    return evaluate_model(model, loader, dataset, ann=ann, backend=args.backend,
                          out_detections=args.out_detections, progress=True)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if (args.detections is None) == (args.weights is None):
        print("worldtune eval: give exactly one of --detections FILE or --weights CKPT", file=sys.stderr)
        return 2
    ann, images = _gt_and_images(args)
    if ann is None:
        print("worldtune eval: give --ann VAL.json (or --data-root COCO_DIR)", file=sys.stderr)
        return 2
    from worldtune.cli.errors import report, user_errors

    try:
        if args.detections is not None:
            metrics = coco_evaluate(ann, args.detections, backend=args.backend)
        else:
            metrics = _score_model(args, ann, images)
    except user_errors() as e:  # bad files or data, missing weights: exit 2, as every command
        return report("eval", e)
    print(f"COCO box metrics ({metrics['num_images']} images, {metrics['num_detections']} detections, "
          f"backend {metrics['backend']}), %:")
    print(format_metrics(metrics))
    if metrics.get("per_class") and all(ap is None for ap in metrics["per_class"].values()):
        # every value n/a: say why rather than leave a table of blanks
        print(f"note: {ann} holds no object to score (no annotation, or only crowd ones), so every AP is n/a")
    if metrics.get("skipped_images"):
        ids = metrics["skipped_images"]
        print(f"note: {len(ids)} unreadable or missing image(s) left out of the scoring with their objects "
              f"(--on-bad-data skip): image ids {ids[:10]}{' ...' if len(ids) > 10 else ''}")
    if metrics.get("dropped_annotations"):
        print(f"note: {metrics['dropped_annotations']} bad annotation(s) left out of the scoring (--on-bad-data skip)")
    if args.json is not None:
        write_text(args.json, json.dumps(metrics_to_json(metrics), indent=2))  # a failure names the file
        print(f"metrics written to {args.json}")
    if args.plot is not None:
        from worldtune.eval.plots import plot_eval

        source = args.weights if args.weights is not None else args.detections.name
        with writing(args.plot):
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            plot_eval(metrics, args.plot, title=f"{source} on {Path(ann).name}")
        print(f"plot written to {args.plot}")
    return 0
