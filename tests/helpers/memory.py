"""Peak resident memory of a block of code (Linux: /proc/self/status, reset with clear_refs)."""
import ctypes
import gc
from pathlib import Path

import pytest


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _return_free_heap() -> None:
    """Give freed heap pages back to the system (glibc's malloc_trim): pages earlier tests freed but
    the process kept would otherwise be reused without growing RSS, hiding what a block allocates."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as is
        pass


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (skips the test where Linux's clear_refs is unavailable);
    returns the current RSS in bytes."""
    gc.collect()
    _return_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    return _kib("VmRSS") * 1024


def peak_since_reset() -> int:
    """VmHWM in bytes: the most resident memory since `reset_peak`."""
    return _kib("VmHWM") * 1024
