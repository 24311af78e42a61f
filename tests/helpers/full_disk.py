"""A file that fills the disk: wrap what `open` / `os.fdopen` return to test a failed write."""
import errno


class FullDisk:
    """Writes the first `keep` characters (or bytes) of a write, then raises ENOSPC, as a write
    that fills the disk does; everything else goes to the wrapped file."""

    def __init__(self, f, keep: int = 7):
        self.f, self.keep = f, keep

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def write(self, data):
        self.f.write(data[:self.keep])
        raise OSError(errno.ENOSPC, "No space left on device")
