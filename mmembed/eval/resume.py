"""Resumable evaluation runs: a JSON state file saved under a key (a hash of the model, its weights and the settings
that change results) and reused only by a run with the same key. MMEB keeps its finished tasks in one
(``resume_file``), M-BEIR the progress of each pool's ``.npy`` embeddings (``<pool>.progress.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import write_text


def load_state(path: str | Path | None, key: str) -> tuple[dict[str, Any] | None, bool]:
    """``(state, stale)``: the state saved at ``path`` when it was saved under ``key`` (else None), and whether a
    state of another key (another model, weights or settings) is there."""
    if path is None or not Path(path).is_file():
        return None, False
    state = json.loads(Path(path).read_text())
    return (state, False) if state.get("key") == key else (None, True)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (an interruption never leaves half a file); makes its folder."""
    write_text(path, json.dumps(state, default=str))
