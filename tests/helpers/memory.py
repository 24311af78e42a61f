"""Peak resident memory of a block of code (Linux: /proc/self/status, reset with clear_refs)."""
from pathlib import Path

import pytest


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (skips the test where Linux's clear_refs is unavailable);
    returns the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    return _kib("VmRSS") * 1024


def peak_since_reset() -> int:
    """VmHWM in bytes: the most resident memory since `reset_peak`."""
    return _kib("VmHWM") * 1024
