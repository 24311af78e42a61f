"""argparse value types shared by the commands (argparse reports a failed check as a usage error)."""
import argparse
from pathlib import Path


def _number(text: str, kind: type, ok, requirement: str):
    """`text` as `kind` (int or float), refused unless `ok(value)`, with `requirement` saying why."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "at least 1")


def text_tower(text: str) -> str:
    """--text-model of the commands that embed class texts themselves (predict, eval)."""
    if text.strip().lower() == "none":
        raise argparse.ArgumentTypeError("'none' leaves no CLIP text tower to embed the class texts with "
                                         "(it is for `worldtune export --text-feats`)")
    return text


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "0 or more")


def image_size(text: str) -> int:
    """A positive multiple of 32 (the model's largest stride)."""
    return _number(text, int, lambda v: v >= 32 and v % 32 == 0, "a multiple of 32 (32 or more)")


def probability(text: str) -> float:
    """A number in [0, 1] (a probability or a score / IoU threshold)."""
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")


def positive_float(text: str) -> float:
    """A number > 0 (a learning rate)."""
    return _number(text, float, lambda v: v > 0, "greater than 0")


def _creatable(path: Path) -> Path:
    """`path`, unless an existing ancestor of it is a file (then nothing can be created there) or its
    nearest existing folder takes no new file (read-only, no permission): told before the work."""
    from worldtune.outputs import OutputWriteError, check_writable, reason

    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"cannot create {path}: {parent} is a file, not a folder")
            break
    try:
        check_writable(path if path.is_dir() else path.parent)
    except OutputWriteError as err:  # e.g. "cannot write out/m.json: Read-only file system"
        raise argparse.ArgumentTypeError(f"cannot write {path}: {reason(err.__cause__)}") from None
    return path


def output_file(text: str) -> Path:
    """A file to write at the end of a command: checked now, so no work is lost to a bad path."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it")
    return _creatable(Path(text))


def output_folder(text: str) -> Path:
    """A folder to write into (created if missing)."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return _creatable(Path(text))


# --device in every command that runs the model (engine.dist.resolve_device reads it)
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def add_threads_argument(parser) -> None:
    """--threads: torch's CPU threads for this command (`set_threads`)."""
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="CPU threads for torch (default 0: torch's own choice). On a busy machine 1 can be much "
                             "faster: idle-waiting threads slow every layer down")


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
