"""Training curves as PNG files (matplotlib, when installed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_path

logger = logging.getLogger(__name__)


def save_curve(values: Sequence[float], path: str | Path, *, title: str, xlabel: str, ylabel: str) -> Path | None:
    """Plot ``values`` against their index (with a running mean when there are many) to ``path``; None when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s plot (pip install 'mmembed[eval]').", title)
        return None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = list(range(1, len(values) + 1))
    ax.plot(steps, values, marker="o" if len(values) <= 50 else None, lw=1, label=ylabel)
    window = max(1, len(values) // 10)
    if window > 1:
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, smooth, lw=2, label=f"running mean ({window})")
        ax.legend()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # written whole or not at all
            fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return path
