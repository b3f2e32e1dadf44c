"""Peak-memory helpers shared by the benchmarks (each measurement runs in its own process)."""

from __future__ import annotations

import re
import resource
from pathlib import Path


def proc_kb(key: str) -> int:
    """A ``/proc/self/status`` value in kB (0 where unavailable)."""
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark (VmHWM) on Linux; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_kb("VmHWM") > 0


def peak_rss_kb(hwm: bool) -> int:
    """Peak RSS since the last reset (or since the start, through ``ru_maxrss``, when resets are unavailable)."""
    return proc_kb("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
