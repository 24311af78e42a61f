"""argparse value types shared by the commands."""
import argparse


def positive_int(text: str) -> int:
    """An int >= 1 (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def image_size(text: str) -> int:
    """A positive multiple of 32 (the model's largest stride)."""
    value = positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32, got {value}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a probability or a score / IoU threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value
