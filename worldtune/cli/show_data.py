"""Write a PNG grid of augmented training samples: boxes, polygon outlines (before they are
dropped) and the text of each box, with the sampled vocabulary listed under each tile."""
import argparse
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np

from worldtune.cli.argtypes import image_size, non_negative_int, output_file, positive_int, probability
from worldtune.cli.drawing import draw_label, write_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ann", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="image folder the JSON's file_name entries are relative to")
    parser.add_argument("--class-texts", default=None,
                        help="JSON list of synonym lists, or a text file (not .json) of one text per line "
                             "(default: category names)")
    parser.add_argument("--out", type=output_file, default="show_data.png", help="output picture (.png or .jpg)")
    parser.add_argument("--num", type=positive_int, default=8, help="number of samples")
    parser.add_argument("--cols", type=positive_int, default=4, help="tiles per row")
    parser.add_argument("--epoch", type=int, default=0,
                        help="epoch, counted from 0 as in metrics.jsonl (stage 2 from --close-mosaic-epoch on)")
    parser.add_argument("--close-mosaic-epoch", type=int, default=70,
                        help="first epoch of stage 2 (no mosaic), counted from 0; the recipes' 80 - 10")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the augmentations and of the samples shown")
    parser.add_argument("--imgsz", type=image_size, default=640, help="training image size (multiple of 32)")
    parser.add_argument("--no-mask-refine", action="store_true",
                        help="boxes only, no copy-paste, as the SGD recipe (which also uses --affine-scale 0.1 1.9 "
                             "and --close-mosaic-epoch 10)")
    parser.add_argument("--affine-scale", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"),
                        help="scale range of the random affine step (v2-s recipe)")
    parser.add_argument("--mixup", type=probability, default=0.15, help="MixUp probability (v2-s recipe)")
    parser.add_argument("--copypaste", type=probability, default=0.3, help="copy-paste probability (v2-s recipe)")
    parser.add_argument("--num-texts", type=positive_int, default=80,
                        help="texts per sample: its classes, negatives, then empty padding")
    parser.add_argument("--on-bad-data", choices=("error", "skip"), default="error",
                        help="error: stop at the first bad image or annotation; skip: drop and count them")


def _colour(k: int) -> tuple:
    hue = (k * 47) % 180
    hsv = np.uint8([[[hue, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def caption(texts: list[str], line_len: int, max_lines: int) -> list[str]:
    """'N texts: a, b, ...' in lines of at most `line_len` characters, broken between words; cut
    with ' ...' after `max_lines` lines."""
    lines = textwrap.wrap(f"{len(texts)} texts: " + ", ".join(texts), line_len)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:max(line_len - 4, 0)] + " ..."
    return lines


def draw_sample(sample: dict, caption_lines: int = 3) -> np.ndarray:
    """Tile (uint8 BGR) of one `TrainDataset` sample with boxes, polygons and texts drawn."""
    img = sample["img"].copy()
    polygons = sample.get("polygons")
    for i, (box, label) in enumerate(zip(sample["bboxes"], sample["labels"])):
        colour = _colour(int(label))
        if polygons is not None:
            cv2.polylines(img, [np.round(p).astype(np.int32) for p in polygons[i]], True, colour, 1)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
        draw_label(img, sample["texts"][int(label)], x1, y1, colour)
    lines = caption([t for t in sample["texts"] if t], max(1, img.shape[1] // 7), caption_lines)
    band = np.full((16 * caption_lines + 4, img.shape[1], 3), 255, dtype=np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(band, line, (2, 14 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([img, band], 0)


def make_grid(tiles: list, cols: int) -> np.ndarray:
    """Stack equally sized tiles row-major, padding the last row with white."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return grid


def run(args: argparse.Namespace) -> int:
    from worldtune.data.coco import CocoDetection, DataError
    from worldtune.data.presets import build_train_dataset

    try:
        dataset = CocoDetection(args.ann, args.images, args.class_texts, on_bad_data=args.on_bad_data)
    except DataError as e:
        print(f"worldtune show-data: error: {e}", file=sys.stderr)
        return 2
    if args.affine_scale[0] > args.affine_scale[1] or args.affine_scale[0] <= 0:
        print(f"worldtune show-data: error: --affine-scale wants MIN MAX with 0 < MIN <= MAX, got "
              f"{args.affine_scale[0]} {args.affine_scale[1]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"):
        print(f"worldtune show-data: error: --out {out}: name a picture file (.png or .jpg)", file=sys.stderr)
        return 2
    train_set = build_train_dataset(dataset, imgsz=args.imgsz, mask_refine=not args.no_mask_refine,
                                    affine_scale=tuple(args.affine_scale), mixup_prob=args.mixup,
                                    copypaste_prob=args.copypaste, close_mosaic_epoch=args.close_mosaic_epoch,
                                    num_texts=args.num_texts, seed=args.seed,
                                    cache_images=False)  # a few samples: caching every image would cost more
    train_set.set_epoch(args.epoch)
    indices = np.random.default_rng(args.seed).permutation(len(train_set))[:args.num]
    tiles = [draw_sample(train_set[int(i)]) for i in np.resize(indices, args.num)]
    try:
        write_image(out, make_grid(tiles, min(args.cols, len(tiles))))
    except OSError as e:
        print(f"worldtune show-data: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {len(tiles)} samples, stage {train_set.stage}, epoch {args.epoch}")
    return 0
