"""Rows -> ``datasets.Dataset`` with the ``keys`` column the no-duplicates sampler reads."""

from __future__ import annotations

from .collator import content_key


def row_keys(row: dict) -> list[int]:
    """Content keys of every input of a row (anchor, positive, negatives)."""
    positives = row["positive"] if isinstance(row["positive"], list) else [row["positive"]]
    sides = [row["anchor"], *positives, *(row.get("negative") or [])]
    return [content_key(s.get("text"), s.get("image")) for s in sides]


def to_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` of training rows, with a ``keys`` column."""
    from datasets import Dataset

    return Dataset.from_list([{**row, "keys": row_keys(row)} for row in rows])
