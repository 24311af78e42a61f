"""What a command prints for a user's mistake: one line naming the problem, not a traceback."""
import os

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
        last = [line for line in text.splitlines() if line.strip()][-1]  # "[module.]Name: message"
        head, sep, message = last.partition(": ")
        return message if sep and head.rpartition(".")[2] == type(error).__name__ else last
    if isinstance(error, UnicodeDecodeError):
        return f"not a UTF-8 text file ({error})"
    return text or type(error).__name__


def debug() -> bool:
    """WORLDTUNE_DEBUG=1 shows the full traceback of a user error too."""
    return os.environ.get("WORLDTUNE_DEBUG", "") not in ("", "0")
