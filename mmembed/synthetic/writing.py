"""Text output of the synthetic benchmark: atomic writes with LF line ends (an interrupted run leaves no
truncated file), JSON lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..files import write_text

__all__ = ["write_jsonl", "write_text_lf"]


def write_text_lf(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, with LF line ends."""
    write_text(path, text, newline="\n")  # atomic: an interrupted run leaves no truncated file


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """One JSON object a line (UTF-8, not ASCII-escaped)."""
    write_text_lf(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
