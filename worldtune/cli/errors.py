"""What a command prints for a user's mistake: one line naming the problem, not a traceback."""
import os
import re
import sys

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


def debug() -> bool:
    """WORLDTUNE_DEBUG=1 shows the full traceback of a user error too."""
    return os.environ.get("WORLDTUNE_DEBUG", "") not in ("", "0")


def report(command: str, error: BaseException) -> int:
    """Print a user error as one line and return exit status 2; under WORLDTUNE_DEBUG=1, re-raise it."""
    if debug():
        raise error
    print(f"worldtune {command}: error: {user_message(error)}", file=sys.stderr)
    return 2
