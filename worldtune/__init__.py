"""worldtune: fine-tune, evaluate and ship YOLO-World-v2 detectors in pure PyTorch."""

__version__ = "0.1.0"
