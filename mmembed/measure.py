"""Benchmark support: peak-memory measurement (the process's resident set size (RSS) and its peak, in kB), and
:func:`peer_venv`, the separate environment of a peer library that cannot share mmembed's dependencies.

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

import importlib.util
import re
import resource
import subprocess
import sys
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


def peer_venv(python: Path, requirement: str) -> None:
    """A venv at ``python``'s (``<venv>/bin/python``) with ``requirement`` pip-installed, sharing this environment's
    torch through a ``.pth`` file of links (a peer such as infinity-emb or sentence-transformers[onnx] needs other
    transformers / optimum versions than mmembed, but the same CPU torch)."""
    venv = python.parents[1]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    ours = Path(importlib.util.find_spec("torch").submodule_search_locations[0]).parent
    shared = venv / "shared-torch"
    shared.mkdir(exist_ok=True)
    for entry in ours.iterdir():
        if entry.name.split("-")[0] in ("torch", "torchgen", "functorch") and not (shared / entry.name).exists():
            (shared / entry.name).symlink_to(entry)
    (site / "shared_torch.pth").write_text(f"{shared}\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
