"""argparse value types shared by the commands."""
import argparse
from pathlib import Path


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


def _blocking_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of `path` that is a file (so `path` cannot be created), if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_file(text: str) -> Path:
    """A file to write at the end of a command: checked now, so no work is lost to a bad path."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; name a file in it")
    blocker = _blocking_ancestor(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"cannot create {path}: {blocker} is a file, not a folder")
    return path


def output_folder(text: str) -> Path:
    """A folder to write into (created if missing)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    blocker = _blocking_ancestor(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"cannot create {path}: {blocker} is a file, not a folder")
    return path


def non_negative_int(text: str) -> int:
    """An int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value
