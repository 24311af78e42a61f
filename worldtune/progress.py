"""Progress bars that suit both a terminal and a log file."""
import sys

from tqdm import tqdm


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar on stderr. Into a log file (a batch job's stderr) every refresh becomes a new line,
    so there it refreshes every 30 s instead of ten times a second."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    kwargs["mininterval"] = kwargs.get("mininterval", 0.1) if interactive else max(kwargs.get("mininterval", 0), 30.0)
    return tqdm(iterable, **kwargs)


def end_progress_bars() -> None:
    """Close the bars still open (a command stopped by an error), so that its message starts on a line
    of its own instead of after a bar's last refresh (and no bar is redrawn after it)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
