"""List the model variants with their parameter counts and GFLOPs (image side, batch 1)."""
from worldtune.cli.argtypes import image_size, positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--imgsz", type=image_size, default=640, help="square input size for the FLOPs count")
    parser.add_argument("--num-texts", type=positive_int, default=80, help="vocabulary size for the FLOPs count")


def run(args) -> int:
    from worldtune.model import VARIANTS  # here, not at the top: `worldtune --help` must not wait for torch
    from worldtune.model.summary import variant_summary

    print(f"{'variant':<18}{'params (M)':>12}{'+ CLIP text (M)':>17}{f'GFLOPs @{args.imgsz}':>14}  note")
    for name in VARIANTS:
        s = variant_summary(name, args.imgsz, args.num_texts)
        note = "" if s["published"] else "unofficial (CPU tests/demos)"
        print(f"{name:<18}{s['params'] / 1e6:>12.2f}{s['params_with_text'] / 1e6:>17.2f}{s['gflops']:>14.1f}  {note}")
    print(f"GFLOPs: one forward with {args.num_texts} texts, multiply-add = 2 FLOPs; "
          "the text tower runs once per vocabulary.")
    return 0
