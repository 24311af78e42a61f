"""CPU (or GPU) forward latency per variant at 640x640, batch 1, 80 texts (image side + head).

    python benchmarks/latency.py [--variants s m l x] [--imgsz 640] [--repeats 5] [--device cpu] [--amp bf16]

The text tower is not timed: class embeddings are computed once per vocabulary and cached.
With `--ultralytics`, the Ultralytics YOLO-World-v2 model of the same size (built from its yaml,
random weights) is timed in the same run when the package is installed (benchmark-only reference).
"""
import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from worldtune.model import build_model


def time_forward(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ultralytics_forward(variant: str, imgsz: int, device: str):
    try:
        from ultralytics import YOLOWorld as ULYOLOWorld  # AGPL, benchmark-only
    except ImportError:
        return None
    model = ULYOLOWorld(f"yolov8{variant}-worldv2.yaml").model.to(device).eval()
    images = torch.rand(1, 3, imgsz, imgsz, device=device)
    return lambda: model(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["s", "m", "l", "x"])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast on CUDA")
    parser.add_argument("--ultralytics", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}, imgsz {args.imgsz}, batch 1, 80 texts, "
          f"amp {args.amp}")
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    print(f"{'variant':<10}{'worldtune ms':>14}{'ultralytics ms':>16}")
    for variant in args.variants:
        model = build_model(variant).to(args.device).eval()
        images = torch.rand(1, 3, args.imgsz, args.imgsz, device=args.device)
        text = torch.nn.functional.normalize(torch.randn(1, 80, 512, device=args.device), dim=-1)
        autocast = torch.autocast("cuda", dtype=dtype) if dtype and args.device.startswith("cuda") else nullcontext()
        with torch.inference_mode(), autocast:
            ours = time_forward(lambda: model(images, text), args.repeats)
            ref_fn = ultralytics_forward(variant, args.imgsz, args.device) if args.ultralytics else None
            ref = time_forward(ref_fn, args.repeats) if ref_fn else None
        ref_text = f"{ref * 1e3:>16.1f}" if ref else f"{'n/a':>16}"
        print(f"{variant:<10}{ours * 1e3:>14.1f}{ref_text}")


if __name__ == "__main__":
    main()
