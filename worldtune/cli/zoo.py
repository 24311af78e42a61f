"""List the published YOLO-World-v2 COCO checkpoints and which are already in the local cache.

`worldtune zoo --get NAME` fetches one (alias, recipe or file name) and prints its local path.
"""
import argparse
import sys

from worldtune import zoo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--get", metavar="NAME", help="download (or find in the cache) NAME and print its path")
    parser.add_argument("--allow-hash-mismatch", action="store_true",
                        help="accept a file whose SHA-256 disagrees with the 8-hex suffix of its name")


def _mark(filename) -> str:
    return "[cached]" if filename and zoo.cached_path(filename) else ""


def _num(v) -> str:
    return "  -  " if v is None else f"{v:5.1f}"


def format_table() -> str:
    lines = [f"Published COCO fine-tuned checkpoints (https://huggingface.co/{zoo.HF_REPO}); "
             f"COCO val2017 box AP, %",
             f"{'alias':<26}{'variant':<18}{'AP':>5} {'AP50':>5} {'AP75':>5} {'AP^ZS':>5}  file"]
    for e in zoo.ZOO:
        file_text = e.finetuned or f"not released ({e.note})"
        lines.append(f"{e.alias:<26}{e.variant:<18}{_num(e.ap)} {_num(e.ap50)} {_num(e.ap75)} "
                     f"{_num(e.ap_zero_shot)}  {file_text} {_mark(e.finetuned)}".rstrip())
        lines.append(f"{'':<26}recipe {e.recipe}, starts from {e.pretrained}")
    lines += ["", "Pre-trained starting points (the recipes' load_from)"]
    for alias, filename in zoo.PRETRAINED.items():
        lines.append(f"{alias:<26}{filename} {_mark(filename)}".rstrip())
    lines += ["", f"cache: {zoo.cache_dir()}",
              "File names are those the official READMEs link to; if the hub owner renamed a file, "
              "download it yourself and pass its local path."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.get:
        try:
            path = zoo.resolve_weights(args.get, allow_hash_mismatch=args.allow_hash_mismatch)
        except zoo.UnknownWeightsError as e:  # a bad argument (exit 2), not a failed download (1)
            print(f"worldtune zoo: error: {e}", file=sys.stderr)
            return 2
        except (zoo.WeightsNotAvailableError, zoo.WeightsHashError) as e:
            print(f"worldtune zoo: {e}", file=sys.stderr)
            return 1
        print(path)
        return 0
    print(format_table())
    return 0
