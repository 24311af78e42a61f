"""Writing output files: a failure names the file and its cause in one line.

A failed `write()` (a full disk) raises an OSError that names no file, and a long command writes
several: `writing(path)` adds the name, and `write_text` leaves no cut-short file.
`check_writable(folder)` finds an unwritable output place before a command does its work, not after.
"""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class OutputWriteError(OSError):
    """An output file could not be written. str() is the one-line message; `errno` and `path` are kept."""

    def __init__(self, message: str, path: Path, cause: OSError):
        super().__init__(message)
        self.errno, self.path = cause.errno, Path(path)


def reason(err: OSError) -> str:
    """The system's wording of the cause ("No space left on device"), without "[Errno 28]"."""
    return err.strerror or str(err) or type(err).__name__


def remedy(err: OSError, folder: Path) -> str:
    """What to do before trying again."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some space on the disk of {folder}"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {folder} writable"
    if err.errno == errno.ENOENT:
        return f"restore the folder {folder}"
    return "fix that"


@contextmanager
def writing(path):
    """Re-raise an OSError of the block as an OutputWriteError "cannot write PATH: cause"."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as err:
        raise OutputWriteError(f"cannot write {path}: {reason(err)}", path, err) from err


@contextmanager
def atomic_file(path, durable: bool = False):
    """A binary file to write `path`'s content to: a temporary file beside it that replaces `path`
    when the block ends (atomic on POSIX and Windows) and is removed when the block fails, so `path`
    is never cut short. An OSError (a full disk) is raised as an OutputWriteError naming `path`.
    `durable`: fsync the file and the rename too (checkpoints: survive a power cut)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable and hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def write_text(path, text: str) -> None:
    """Write `text` to `path` whole or not at all (`atomic_file`)."""
    write_bytes(path, text.encode())


def write_bytes(path, data: bytes) -> None:
    """Write `data` (an encoded picture) to `path` whole or not at all (`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def write_figure(fig, path, dpi: int = 90) -> None:
    """Save the matplotlib figure `fig` to `path`, in the format its suffix names, whole or not at all."""
    with atomic_file(path) as f:
        fig.savefig(f, format=Path(path).suffix[1:] or None, dpi=dpi)


def check_writable(folder, what: str = "folder") -> None:
    """Raise OutputWriteError unless files can be created in `folder` (or, where it does not exist
    yet, in its nearest existing parent, where it would be made). Tries it: permission bits do not
    tell a read-only file system or a full disk, nor what root may do."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise OutputWriteError(f"cannot create {what} {folder}: {existing} is a file, not a folder", folder,
                               OSError(errno.ENOTDIR, "not a folder"))
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        where = "" if existing == folder else f" (in {existing})"
        raise OutputWriteError(f"cannot write {what} {folder}: {reason(err)}{where}", folder, err) from err
