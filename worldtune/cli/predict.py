"""Detect any vocabulary in images; writes annotated images and JSON detections.

  worldtune predict --weights v2-s-coco --classes "person,red car" photos/ street.jpg --out preds/
  worldtune predict --weights runs/my_run/best.pt --class-texts texts.json --score-thr 0.3 photos/
  worldtune predict --weights runs/my_run/best.pt photos/      # the classes the run was trained on

Per image: `<name>.jpg|png` with boxes, names and scores drawn, and `<name>.json` with the
detections in original pixels; `predictions.json` sums everything up, including skipped files.
"""
import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

from worldtune.cli.argtypes import (DEVICE_HELP, add_threads_argument, image_size, output_folder, positive_int,
                                    probability, set_threads, text_tower)
from worldtune.cli.drawing import draw_label, write_image
from worldtune.cli.errors import report, user_errors
from worldtune.cli.text_model_choice import load_model_for
from worldtune.data.image_files import MOTION_PHOTO_NOTE, jpeg_cut_short
from worldtune.data.texts import load_class_texts
from worldtune.outputs import write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Distinct, saturated RGB colours; class k uses PALETTE[k % len(PALETTE)].
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128)]


def add_vocabulary_arguments(parser: argparse.ArgumentParser) -> None:
    """--classes / --class-texts, shared with `worldtune export`."""
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--classes", help='comma-separated class texts, e.g. "person,red car"')
    vocab.add_argument("--class-texts", type=Path,
                       help="JSON list of synonym lists (first synonym used), or a text file (not .json) with one "
                            "class per line")


def read_vocabulary(classes: str | None, class_texts: Path | None) -> list[str] | None:
    """The class texts from --classes or --class-texts; None when neither is given.

    Raises:
        ValueError naming the option or file when the vocabulary is empty or malformed.
    """
    if classes is not None:
        texts = [t.strip() for t in classes.split(",")]
        while texts and not texts[-1]:  # a trailing comma
            texts.pop()
        if not texts:
            raise ValueError(f"--classes {classes!r} holds no class text")
        if "" in texts:  # dropping it would shift every later class index (ONNX outputs, JSON labels)
            raise ValueError(f"--classes {classes!r}: class {texts.index('') + 1} is empty")
        return texts
    if class_texts is None:
        return None
    path = Path(class_texts)
    texts = [entry[0].strip() for entry in load_class_texts(path, None)]  # the first synonym of each class
    if not texts:
        raise ValueError(f"class-text file {path} holds no class text")
    return texts


def check_weights_bring_texts(weights: str, note: str = "") -> None:
    """Without --classes or --class-texts only a worldtune run's checkpoint gives the vocabulary:
    refuse random weights and zoo names (official checkpoints hold no class texts) before loading,
    which for a zoo name can mean a download of hundreds of MB. `note` ends the message.

    Raises:
        ValueError naming --weights and the options that give a vocabulary.
    """
    from worldtune import zoo

    if Path(weights).expanduser().exists():
        return  # a file: a run's checkpoint brings its class texts; an official .pth is told after loading
    if weights.lower() == "none":
        why = "--weights none (random weights) brings no class texts"
    elif weights in zoo.names():
        why = f"--weights {weights} is an official checkpoint, which holds no class texts"
    else:
        return
    raise ValueError(f"no vocabulary: {why}; give --classes 'person,car' or --class-texts FILE{note}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    parser.add_argument("--weights", required=True,
                        help="checkpoint path, zoo name (see `worldtune zoo`) or 'none' (random, with --variant)")
    add_vocabulary_arguments(parser)
    parser.add_argument("--out", type=output_folder, default=Path("predictions"), help="output folder")
    parser.add_argument("--variant", help="model variant; inferred from the checkpoint when omitted")
    parser.add_argument("--text-model", type=text_tower, default=None,
                        help="CLIP text tower: hub id or local folder (only its tokenizer when the checkpoint "
                             "carries the tower), or 'random' (tests) (default: openai/clip-vit-base-patch32; "
                             "none for the class texts whose embeddings a slim file stores)")
    parser.add_argument("--imgsz", type=image_size, default=None,
                        help="network input size, a multiple of 32 (default: the checkpoint's training size, else 640)")
    parser.add_argument("--score-thr", type=probability, default=0.25,
                        help="keep detections above this score (the official 0.001 is for AP evaluation)")
    parser.add_argument("--iou-thr", type=probability, default=0.7, help="class-aware NMS IoU threshold")
    parser.add_argument("--max-det", type=positive_int, default=300, help="detections kept per image")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_threads_argument(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
VIDEO_NOTE = "a video: predict reads images only (extract its frames first, e.g. ffmpeg -i clip.mp4 frames/%06d.jpg)"


def expand_inputs(inputs: list[Path]) -> tuple[list[Path], list[dict]]:
    """Files as given, folders expanded to their images (sorted; subfolders are not searched).
    Returns (paths, entries for what is skipped: missing inputs, videos, folders' unsearched subfolders)."""
    paths, missing = [], []
    # a subfolder given as an input, or holding one, is searched: one set, not a scan of every input
    # per subfolder (a shell glob gives thousands of inputs)
    given = [Path(os.path.abspath(item)) for item in inputs]
    searched = {folder for path in given for folder in (path, *path.parents)}
    for item in inputs:
        if item.is_dir():
            entries = sorted(item.iterdir())
            found = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            missing += [{"image": str(p), "error": VIDEO_NOTE} for p in entries
                        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
            # said, not silently passed over: photos sorted into day or camera folders
            subfolders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")
                          and Path(os.path.abspath(p)) not in searched]
            unsearched = (f"{len(subfolders)} subfolder(s) not searched ({', '.join(subfolders[:3])}"
                          f"{', ...' if len(subfolders) > 3 else ''}): give them as inputs too") if subfolders else ""
            if not found:
                missing.append({"image": str(item), "error": f"folder has no images ({', '.join(IMAGE_EXTENSIONS)})"
                                + (f"; {unsearched}" if unsearched else "")})
            elif unsearched:
                missing.append({"image": str(item), "error": unsearched})
            paths.extend(found)
        elif item.is_file() and item.suffix.lower() in VIDEO_EXTENSIONS:
            missing.append({"image": str(item), "error": VIDEO_NOTE})
        elif item.is_file():
            paths.append(item)
        else:
            missing.append({"image": str(item), "error": "no such file or folder"})
    return paths, missing


def draw_detections(img_rgb: np.ndarray, det: dict, names: list[str]) -> np.ndarray:
    """Boxes with 'name score' labels on a BGR copy of `img_rgb` (H, W, 3); det as `predict` returns."""
    out = cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR)
    h, w = out.shape[:2]
    thick = max(1, round((h + w) / 600))  # lines and text grow with the image
    font_scale = max(0.4, (h + w) / 2400)
    rows = sorted(zip(det["scores"].tolist(), det["boxes_xyxy"].tolist(), det["labels"].tolist()),
                  key=lambda row: row[0])  # the most confident drawn last, so on top where labels overlap
    for score, box, label in rows:
        r, g, b = PALETTE[label % len(PALETTE)]
        colour = (b, g, r)  # OpenCV draws BGR
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        draw_label(out, f"{names[label]} {score:.2f}", x1, y1, colour, font_scale, thick)
    return out


def _output_name(path: Path, used: set, out: Path, inputs: set) -> str:
    """File name of `path`'s drawing in `out`: unique, and never one of the input images."""
    suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    stem, k = path.stem, 1
    # same file name in two input folders, or --out is an input folder
    while stem in used or (out / (stem + suffix)).resolve() in inputs or (out / (stem + ".json")).resolve() in inputs:
        stem, k = f"{path.stem}_{k}", k + 1
    used.add(stem)
    return stem + suffix


def _detections_json(det: dict, names: list[str], category_ids: list[int]) -> list[dict]:
    """One entry per detection; `category_ids` (the training file's id of each name, or []) adds the
    dataset's own id beside the label, which counts from 0 in vocabulary order."""
    return [{"label": label, **({"category_id": category_ids[label]} if category_ids else {}), "name": names[label],
             "score": round(score, 5), "box_xyxy": [round(v, 2) for v in box]}
            for box, score, label in zip(det["boxes_xyxy"].tolist(), det["scores"].tolist(), det["labels"].tolist())]


def run(args: argparse.Namespace) -> int:
    import torch
    from worldtune.progress import progress_bar

    from worldtune.engine.dist import resolve_device
    from worldtune.model.postprocess import PostprocessConfig
    from worldtune.model.predict import letterbox_for_test, predict_batch, read_image_rgb

    set_threads(args.threads)

    try:
        texts = read_vocabulary(args.classes, args.class_texts)
        if texts is None:
            check_weights_bring_texts(args.weights)
        paths, skipped = expand_inputs(args.inputs)
        device = resolve_device(args.device)  # engine.dist: auto / cpu / cuda[:N]
        model = load_model_for(args.weights, args.variant, device, args.text_model, texts,
                               "leave out --text-model, and --classes/--class-texts or name exactly "
                               "those texts, in their order")
        args.imgsz = args.imgsz or model.trained_imgsz or 640  # both checked already: parsing, the checkpoint reader
        if texts is None:
            texts = list(model.vocabulary)  # a worldtune checkpoint's training classes
            if not texts:
                raise ValueError("no vocabulary: give --classes 'person,car' or --class-texts FILE")
            print(f"vocabulary: the checkpoint's {len(texts)} training classes ({', '.join(texts[:5])}"
                  f"{', ...' if len(texts) > 5 else ''}); --classes or --class-texts gives others", file=sys.stderr)
        # the run's own classes (from a checkpoint that records their ids): detections name those ids too
        trained_ids = list(getattr(model, "trained_category_ids", []) or [])
        category_ids = trained_ids if texts == model.vocabulary and len(trained_ids) == len(texts) else []
        if texts == model.vocabulary:
            model.vocabulary_feats()  # the file's stored embeddings, or the tower's now (its errors said here)
        else:
            model.set_vocabulary(texts)
        args.out.mkdir(parents=True, exist_ok=True)
    except user_errors() as e:
        return report("predict", e)
    cfg = PostprocessConfig(score_thr=args.score_thr, iou_thr=args.iou_thr, max_per_img=args.max_det)
    results, used, cut_short = [], {"predictions"}, set()  # that name is the summary's
    inputs = {p.resolve() for p in paths}
    bar = progress_bar(total=len(paths), unit="img", desc="predict", disable=len(paths) < 2)
    for start in range(0, len(paths), args.batch_size):
        batch, boxed = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                img = read_image_rgb(path)
                boxed.append(letterbox_for_test(img, args.imgsz))
                batch.append((path, img))
                if jpeg_cut_short(path):  # OpenCV decodes it without an error, the missing rows grey
                    cut_short.add(path)
                    warnings.warn(f"{path} is cut short (no JPEG end marker): its missing rows are grey "
                                  f"({MOTION_PHOTO_NOTE})")
            except (ValueError, cv2.error) as e:  # unreadable, or an image OpenCV cannot process
                skipped.append({"image": str(path), "error": (str(e).strip().splitlines() or [repr(e)])[-1]})
                bar.update(1)
        if not batch:
            continue
        images = torch.from_numpy(np.stack([b[0] for b in boxed])).permute(0, 3, 1, 2)
        dets = predict_batch(model, images, [b[1] for b in boxed], [b[2] for b in boxed],
                             [img.shape[:2] for _, img in batch], cfg)
        for (path, img), det in zip(batch, dets):
            det = {k: v.cpu() for k, v in det.items()}
            name = _output_name(path, used, args.out, inputs)
            write_image(args.out / name, draw_detections(img, det, texts))
            record = {"image": str(path), "width": img.shape[1], "height": img.shape[0], "annotated": name,
                      "detections": _detections_json(det, texts, category_ids),
                      **({"cut_short": True} if path in cut_short else {})}
            write_text(args.out / Path(name).with_suffix(".json"), json.dumps(record, indent=1))
            results.append(record)
            bar.update(1)
    bar.close()
    summary = {"weights": str(args.weights), "classes": texts,
               **({"category_ids": category_ids} if category_ids else {}), "imgsz": args.imgsz,
               "score_thr": args.score_thr, "iou_thr": args.iou_thr, "max_det": args.max_det, "images": results,
               "skipped": skipped}
    write_text(args.out / "predictions.json", json.dumps(summary, indent=1))
    n_det = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} images, {n_det} detections -> {args.out}")
    for s in skipped:
        print(f"skipped {s['image']}: {s['error']}", file=sys.stderr)
    return 0 if results else 1
