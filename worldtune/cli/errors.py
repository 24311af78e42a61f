"""What a command prints for a user's mistake: one line naming the problem, not a traceback."""
import os
import re
import sys

from worldtune.progress import end_progress_bars

# Problems with the user's input or environment. Anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, ImportError)


def user_errors() -> tuple:
    """USER_ERRORS plus worldtune's own error classes (imported here, not at start-up, for speed)."""
    from worldtune.engine.checkpoint import CheckpointError
    from worldtune.model.text_encoder import TextModelUnavailableError

    return USER_ERRORS + (CheckpointError, TextModelUnavailableError)


def user_message(error: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker ("Caught DataError in
    DataLoader worker process 0. Original Traceback ..."), the original message alone."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        # the traceback ends with the line "[module.]Name: message", the message maybe several lines
        name = type(error).__name__
        marks = list(re.finditer(rf"\n(?:[\w.]+\.)?{re.escape(name)}: ", text))
        return text[marks[-1].end():].strip() if marks else text.splitlines()[-1]
    if isinstance(error, UnicodeDecodeError):
        return f"not a UTF-8 text file ({error})"
    return text or type(error).__name__


# What to try when a command runs out of memory, by command.
OUT_OF_MEMORY_HINTS = {
    "train": "try a smaller --batch-size (images per process), or if it ran out in validation a smaller "
             "data.val_batch_size (which --resume takes: --set data.val_batch_size=N)",
    "eval": "try a smaller --batch-size",
    "predict": "try a smaller --batch-size",
    "export": "try a smaller --batch or --imgsz",
}


def out_of_memory(error: BaseException) -> bool:
    """A GPU (torch.cuda.OutOfMemoryError) or CPU allocation failure: not the user's mistake, but
    not a bug either, and its usual remedy is known."""
    import torch

    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    # the CPU allocator's failure is a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory")
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error)
                                                or "out of memory" in str(error).lower())


def report_out_of_memory(command: str, error: BaseException) -> int:
    """Print an out-of-memory failure as one line with its remedy and return exit status 1 (the
    work ran but did not succeed; 2 is for the user's mistakes); under WORLDTUNE_DEBUG=1, re-raise it."""
    if debug():
        raise error
    first = (user_message(error).strip().splitlines() or [type(error).__name__])[0]
    hint = OUT_OF_MEMORY_HINTS.get(command)
    end_progress_bars()
    print(f"worldtune {command}: error: out of memory ({first})" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return 1


def debug() -> bool:
    """WORLDTUNE_DEBUG=1 shows the full traceback of a user error too."""
    return os.environ.get("WORLDTUNE_DEBUG", "") not in ("", "0")


def report(command: str, error: BaseException) -> int:
    """Print a user error as one line and return exit status 2; under WORLDTUNE_DEBUG=1, re-raise it."""
    if debug():
        raise error
    end_progress_bars()
    print(f"worldtune {command}: error: {user_message(error)}", file=sys.stderr)
    return 2
