"""A complete fine-tuning run in a few minutes on a CPU, with no download.

Builds a small COCO-format set from photographs shipped with scikit-image (cat, astronaut,
coffee cup, rocket, coins pasted on textures), trains the small `n` model from random weights
with the official loop (mosaic, EMA, warm-up, COCO validation), prints the box AP of the
untrained and of the trained model, and draws the trained model's detections on a val image.

The text tower is a randomly initialised CLIP (the real tokenizer ships with worldtune), so the
class names are just distinct embeddings here: the demo shows the training machinery, not
open-vocabulary transfer. For real fine-tuning use `worldtune train --recipe v2-s ...`.
"""
from __future__ import annotations

import time
from pathlib import Path

from worldtune.cli.argtypes import (DEVICE_HELP, add_threads_argument, image_size, non_negative_int, positive_float,
                                    positive_int, set_threads)
from worldtune.cli.errors import report


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for the data set, the run and the picture")
    parser.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    parser.add_argument("--imgsz", type=image_size, default=256, help="training and evaluation size (multiple of 32)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="AdamW lr (the COCO recipes use 2e-4 from "
                                                               "pre-trained weights; random weights need more)")
    parser.add_argument("--num-train", type=positive_int, default=48, help="training images to generate")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--workers", type=non_negative_int, default=0, help="data-loading processes")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the data set, the weights and the sampling")
    parser.add_argument("--cpu-amp", action="store_true",
                        help="train in bf16 on a CPU that computes bf16 natively (AVX512-BF16 or AMX): about 1.6x "
                             "faster steps there (train.cpu_amp; not official; fp32 elsewhere)")
    add_threads_argument(parser)


def demo_config(data: dict, out: Path, args):
    """The official recipe with a tiny model and schedule: only sizes and lengths change."""
    from worldtune.config import load_recipe

    cfg = load_recipe("v2-s")
    cfg.out = str(out)
    cfg.model.variant, cfg.model.text_model, cfg.model.weights = "n", "random", "none"
    d = cfg.data
    d.train_ann, d.train_images = str(data["train_ann"]), str(data["train_images"])
    d.val_ann, d.val_images = str(data["val_ann"]), str(data["val_images"])
    d.class_texts = str(data["class_texts"])
    d.imgsz, d.workers, d.val_batch_size = args.imgsz, args.workers, 4
    d.num_texts = len(data["class_names"])  # every image sees the whole (small) vocabulary
    t = cfg.train
    t.epochs, t.batch_size, t.lr, t.device, t.seed = args.epochs, args.batch_size, args.lr, args.device, args.seed
    t.cpu_amp = args.cpu_amp
    t.close_mosaic_epochs = max(args.epochs // 3, 1)
    t.min_warmup_iters = 20
    t.warmup_epochs = 1.0
    t.val_interval, t.dynamic_interval_epoch = 10, args.epochs  # validate every 10 epochs and at the end
    t.checkpoint_interval, t.log_interval = 0, 10
    # A few hundred steps from random weights leave BatchNorm running statistics behind the weights;
    # recompute them (on a copy) before each validation. Not part of the official recipe.
    t.precise_bn_batches = 4
    return cfg


def untrained_metrics(cfg) -> dict:
    """COCO AP of the exact start weights of `fit` (same seed, same construction order)."""
    import torch

    from worldtune.data.coco import CocoDetection
    from worldtune.data.loader import build_eval_loader
    from worldtune.data.presets import build_eval_dataset
    from worldtune.model.loading import build_text_model
    from worldtune.eval.evaluate import evaluate_model
    from worldtune.model import build_model

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.variant, build_text_model(cfg.model.text_model, cfg.train.seed),
                        num_classes=cfg.data.num_texts)
    coco = CocoDetection(cfg.data.val_ann, cfg.data.val_images, cfg.data.class_texts or None)
    loader = build_eval_loader(build_eval_dataset(coco, cfg.data.imgsz), cfg.data.val_batch_size)
    return evaluate_model(model.eval(), loader, coco)


def draw_predictions(checkpoint: Path, cfg, image_path: Path, class_names: list, out_path: Path,
                     score_thr: float = 0.3) -> Path:
    """Boxes of the trained (EMA) model on one image, drawn as `worldtune predict` draws them."""
    import torch

    from worldtune.cli.drawing import write_image
    from worldtune.cli.predict import draw_detections
    from worldtune.model.loading import load_model
    from worldtune.model.predict import predict, read_image_rgb

    model = load_model(checkpoint, text_model=cfg.model.text_model)
    model.set_vocabulary(list(class_names))
    with torch.no_grad():
        det = predict(model, [str(image_path)], imgsz=cfg.data.imgsz)[0]
    keep = det["scores"] >= score_thr
    det = {key: det[key][keep] for key in ("boxes_xyxy", "scores", "labels")}
    write_image(out_path, draw_detections(read_image_rgb(image_path), det, list(class_names)))
    return out_path


def busiest_image(ann_file, image_dir) -> Path:
    """The val image with the most objects (the most telling picture)."""
    import json
    from collections import Counter

    coco = json.loads(Path(ann_file).read_text())
    counts = Counter(a["image_id"] for a in coco["annotations"])
    best = max(coco["images"], key=lambda im: (counts[im["id"]], -im["id"]))
    return Path(image_dir) / best["file_name"]


def run(args) -> int:
    from worldtune.config import ConfigError, validate
    from worldtune.data.demo_set import build_demo_dataset
    from worldtune.engine.train import fit

    start = time.perf_counter()
    set_threads(args.threads)
    out = Path(args.out)
    try:
        from worldtune.engine.dist import resolve_device

        resolve_device(args.device)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
    except (ValueError, RuntimeError) as e:  # RuntimeError: a device string torch does not know
        return report("demo", e)
    print(f"building the demo data set in {out / 'data'} (photographs from scikit-image) ...", flush=True)
    data = build_demo_dataset(out / "data", num_train=args.num_train, num_val=12, seed=args.seed)
    run_dir = out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = demo_config(data, run_dir, args)
    try:
        validate(cfg)
    except ConfigError as e:
        return report("demo", e)
    before = untrained_metrics(cfg)
    print(f"untrained model: AP {100 * before['AP']:.1f}  AP50 {100 * before['AP50']:.1f}", flush=True)
    result = fit(cfg)
    if result["status"] != "finished":
        return 130
    after = result["last_metrics"]
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    picture = draw_predictions(checkpoint, cfg, busiest_image(data["val_ann"], data["val_images"]),
                               data["class_names"], out / "demo_predictions.jpg")
    print("\n                          AP    AP50   AP75")
    for name, m in (("untrained", before), ("fine-tuned (last epoch)", after)):
        print(f"{name:<24} {100 * m['AP']:5.1f}  {100 * m['AP50']:5.1f}  {100 * m['AP75']:5.1f}")
    drawn = (f"best.pt, epoch {result['best_epoch'] + 1}, AP {100 * result['best_ap']:.1f}"
             if checkpoint.name == "best.pt" else "last.pt")
    print(f"\npredictions on a val image ({drawn}): {picture}\nrun folder (checkpoints, metrics.jsonl, "
          f"curves.png, last_val.png): {run_dir}\ntook {time.perf_counter() - start:.0f} s")
    return 0
