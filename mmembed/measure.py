"""Peak-memory measurement for benchmarks: the process's resident set size (RSS) and its peak, in kB.

A benchmark resets the peak mark before the part it measures and reads it after, each measurement in a process of
its own (``bench/encode.py``, ``bench/gradcache.py``, ``bench/muco.py``, ``bench/retrieval.py``)::

    hwm = reset_peak_rss()
    base = proc_kb("VmRSS")
    ...  # the measured work
    growth_kb = peak_rss_kb(hwm) - base

On Linux the peak is ``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs``; elsewhere (or where
the reset is refused) it is ``ru_maxrss``, the peak since the process started. Only the standard library is used.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path


def proc_kb(key: str) -> int:
    """A ``/proc/self/status`` value in kB, e.g. ``"VmRSS"`` (0 where unavailable)."""
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark (VmHWM) on Linux; False where that is not possible (pass the result to
    :func:`peak_rss_kb`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_kb("VmHWM") > 0


def peak_rss_kb(hwm: bool) -> int:
    """Peak RSS in kB since the last reset when ``hwm`` (what :func:`reset_peak_rss` returned), else since the
    process started (``ru_maxrss``, kB on Linux)."""
    return proc_kb("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
