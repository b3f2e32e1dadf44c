"""When progress bars are shown: live on a terminal (or in a notebook), never line after line into a log file."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def interactive_stream() -> bool:
    """Whether a progress bar has a live display: stderr is a terminal, or tqdm draws a notebook widget."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stream
        pass
    return any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)


def progress_options(show: bool | None, many: bool) -> dict[str, Any]:
    """tqdm options for a progress bar. ``show=None`` (automatic): shown for ``many`` items, and only where the
    stream is a terminal (or a notebook), never into a log file. An explicit ``show=True`` shows it anywhere;
    written to a log file it is refreshed at most once every 10 seconds."""
    live = interactive_stream()
    enabled = bool(show) if show is not None else many and live
    return {"disable": not enabled, "mininterval": 0.1 if live else 10.0}
