"""Rows -> ``datasets.Dataset`` with the ``keys`` column the no-duplicates sampler reads.

Rows are checked before they become one Arrow table, so that nothing a reader accepted fails later in pyarrow or the
collator: every row has the same fields and the same number of positives; ``negative`` may be absent from some rows
(it is stored as an empty list there when other rows have hard negatives). A row that differs is named by its
file:line (the readers return :class:`~mmembed.data.formats.Rows`, which keep it; :meth:`Rows.join
<mmembed.data.formats.Rows.join>` keeps it across a mixture of files).
"""

from __future__ import annotations

from ..errors import DataError
from .collator import content_key


def _count(value: dict | list | None) -> int:
    return 0 if value is None else len(value) if isinstance(value, list) else 1


def row_keys(row: dict) -> list[int]:
    """Content keys of every input of a row (anchor, positive(s), negatives)."""
    positives = row["positive"] if isinstance(row["positive"], list) else [row["positive"]]
    negatives = row.get("negative") or []
    sides = [row["anchor"], *positives, *(negatives if isinstance(negatives, list) else [negatives])]
    return [content_key(s.get("text"), s.get("image")) for s in sides]


def uniform_rows(rows: list[dict], where: list[str | None] | None = None) -> list[dict]:
    """The rows with their ``keys``, every row with the same fields (``negative``: a list, empty where a row has
    none, when any row has one). Raises :class:`DataError` naming the first row that differs from row 0 by its
    ``file:line`` (``where``, a parallel list, by default the ``where`` of the readers' :class:`Rows`), or, for a row
    without one, by its number (counted across all training files, in the order they were read)."""
    if not rows:
        raise DataError("no training rows: the training data is empty.")
    where = list(getattr(rows, "where", None) or [] if where is None else where)

    def name(index: int) -> tuple[str, str]:
        """How the message names row ``index`` and row 0."""
        if index < len(where) and where[index] and where[0]:
            return f"{where[index]}: the row", where[0]
        return f"training row {index}", "row 0"

    fields = set(rows[0]) - {"negative"}
    positives = _count(rows[0].get("positive"))
    with_negatives = any(_count(row.get("negative")) for row in rows)
    out = []
    for index, row in enumerate(rows):
        if set(row) - {"negative"} != fields:
            this, first = name(index)
            raise DataError(f"{this} has the fields {sorted(set(row) - {'negative'})} but {first} has "
                            f"{sorted(fields)}; every row needs the same fields (only 'negative' may be left out).")
        if _count(row.get("positive")) != positives:
            this, first = name(index)
            raise DataError(f"{this} has {_count(row.get('positive'))} positive(s) but {first} has {positives}; "
                            f"every row needs the same number of positives (in a mixture of files too: the loss "
                            f"pairs each anchor with a block of that many).")
        record = {**row, "keys": row_keys(row)} if "positive" in row else dict(row)
        record.pop("negative", None)
        if with_negatives:
            negative = row.get("negative")
            record["negative"] = [] if negative is None else negative if isinstance(negative, list) else [negative]
        out.append(record)
    return out


def to_dataset(rows: list[dict], where: list[str | None] | None = None):
    """A ``datasets.Dataset`` of training rows, with a ``keys`` column (rows checked by :func:`uniform_rows`, which
    names a bad row by its ``where``: file:line)."""
    import pyarrow as pa
    from datasets import Dataset

    records = uniform_rows(rows, where)
    try:
        return Dataset.from_list(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # rows built by code, not by a reader of mmembed.data.formats
        raise DataError(f"the training rows cannot be stored as one table ({exc}); give every row's inputs the same "
                        f"shape: {{'text': str | None, 'image': str | None}}.") from exc
