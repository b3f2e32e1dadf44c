"""Teacher scores for distillation (DSE): one score per (anchor, positive) pair, cached in JSON lines.

A teacher scores text pairs with cosine-like values in ``[-1, 1]``; anything with a ``name`` and a ``score`` method
(:class:`Teacher`) will do. The teachers that load models (an embedding model, a cross-encoder) live in
:mod:`mmembed.train.teachers`; this module only reads and writes scores: a precomputed file (an LLM judge's scores,
say) is read by :func:`read_teacher_scores`.

The cache (:class:`TeacherScoreCache`) is a JSON-lines file, one record a pair::

    {"key": "<blake2b-128 of teacher, anchor, positive>", "teacher": "embedder:all-mpnet-base-v2",
     "anchor": "...", "positive": "...", "teacher_score": 0.734}

Only missing pairs are scored, a chunk at a time, each chunk appended (and flushed) as soon as it is scored: a run
that stops part-way resumes after the last complete chunk, and a second run scores nothing. Several teachers may
share one file (records are kept apart by ``teacher``). A precomputed file needs only ``anchor``, ``positive`` and
``teacher_score``; bad lines raise :class:`~mmembed.errors.DataError` with ``file:line``.
See ``data_cards/teacher_scores.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import DataError

logger = logging.getLogger(__name__)

SCORE_RANGE = (-1.0, 1.0)
_TOLERANCE = 1e-3

Pair = tuple[str, str]


class Teacher(Protocol):
    """Scores text pairs; ``name`` identifies it in the cache (different teachers never share a score)."""

    name: str

    def score(self, anchors: Sequence[str], positives: Sequence[str]) -> list[float]: ...


def pair_key(anchor: str, positive: str, teacher: str = "") -> str:
    """The cache key of a pair under a teacher: a 128-bit BLAKE2b hex digest of the three strings."""
    return hashlib.blake2b(f"{teacher}\x00{anchor}\x00{positive}".encode(), digest_size=16).hexdigest()


def _check_score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: 'teacher_score' must be a finite number, got {value!r}.")
    low, high = SCORE_RANGE
    if not low - _TOLERANCE <= value <= high + _TOLERANCE:
        raise DataError(f"{where}: teacher_score {value:g} is outside [{low:g}, {high:g}]: teacher scores are "
                        f"cosine-like (a cross-encoder's sigmoid gives [0, 1]); rescale them (e.g. a 0-5 score / 5).")
    return float(value)


def _parse_record(line: str, where: str) -> tuple[str | None, Pair, float]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg}).") from exc
    if not isinstance(record, dict):
        raise DataError(f"{where}: a teacher-score record is a JSON object {{\"anchor\", \"positive\", "
                        f"\"teacher_score\"}}.")
    for name in ("anchor", "positive"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise DataError(f"{where}: '{name}' missing or not a non-empty string (a record has 'anchor', "
                            f"'positive' and 'teacher_score').")
    if "teacher_score" not in record:
        raise DataError(f"{where}: 'teacher_score' missing.")
    score = _check_score(record["teacher_score"], where)
    teacher = record.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        raise DataError(f"{where}: 'teacher' must be a string, got {type(teacher).__name__}.")
    if "key" in record and record["key"] != pair_key(record["anchor"], record["positive"], teacher or ""):
        raise DataError(f"{where}: 'key' does not match the record's teacher and texts (edited by hand?): fix the "
                        f"texts or drop the 'key' field.")
    return teacher, (record["anchor"], record["positive"]), score


def read_teacher_scores(path: str | Path, teacher: str | None = None) -> dict[Pair, float]:
    """``{(anchor, positive): score}`` from a teacher-score file.

    With ``teacher``, only records of that teacher (``"teacher"`` field) are read; without it, all records, and a
    pair scored twice with different values raises (pass ``teacher`` to pick one). Bad lines raise
    :class:`DataError` with ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"teacher-score file '{path}' does not exist.")
    scores: dict[Pair, float] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            owner, pair, score = _parse_record(line, where)
            if teacher is not None and owner != teacher:
                continue
            if pair in scores and scores[pair] != score:
                raise DataError(f"{where}: the pair was already scored {scores[pair]:g}, here {score:g} (two "
                                f"teachers in one file?): choose one with teacher_name.")
            scores[pair] = score
    return scores


def pairs_of(rows: Iterable[dict]) -> list[Pair]:
    """The (anchor text, positive text) of each training row (text-only rows, one positive each)."""
    pairs = []
    for i, row in enumerate(rows):
        sides = []
        for column in ("anchor", "positive"):
            side = row.get(column)
            if isinstance(side, list):
                if len(side) != 1:
                    raise DataError(f"row {i}: {len(side)} {column} inputs; distillation scores one (anchor, "
                                     f"positive) pair per row.")
                side = side[0]
            if not isinstance(side, dict) or not side.get("text") or side.get("image"):
                raise DataError(f"row {i}: the {column} must be a text (teacher scores are for text pairs).")
            sides.append(side["text"])
        pairs.append((sides[0], sides[1]))
    return pairs


def attach_teacher_scores(rows: Sequence[dict], scores: Sequence[float]) -> list[dict]:
    """Copies of ``rows`` with their ``teacher_score`` (what the collator passes to the loss as
    ``teacher_scores``)."""
    if len(rows) != len(scores):
        raise ValueError(f"{len(scores)} teacher scores for {len(rows)} rows.")
    return [{**row, "teacher_score": float(s)} for row, s in zip(rows, scores)]


class TeacherScoreCache:
    """A teacher's scores in a JSON-lines file: read once, appended to chunk by chunk.

    ``computed`` counts the pairs this object scored (the test of "once": a second pass computes 0). A last line
    cut short by an interrupted write is dropped (with a warning) before anything is appended; any other bad line
    raises :class:`DataError` with ``file:line``.
    """

    def __init__(self, path: str | Path, teacher: str) -> None:
        if not teacher:
            raise ValueError("give the teacher a name (it keys the cache).")
        self.path = Path(path)
        self.teacher = teacher
        self.computed = 0
        self.scores: dict[Pair, float] = {}
        if self.path.is_file():
            self._repair_tail()
            self.scores = read_teacher_scores(self.path, teacher)

    def _repair_tail(self) -> None:
        """Drop a last line without its newline that is not a complete record (an interrupted append)."""
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            _parse_record(data[cut:].decode("utf-8"), f"{self.path}:last line")
        except (DataError, UnicodeDecodeError):
            logger.warning("%s: dropping an incomplete last line (an interrupted run); its pair is scored again.",
                           self.path)
            with self.path.open("r+b") as f:
                f.truncate(cut)
            return
        with self.path.open("ab") as f:  # a complete record that lacks only its newline
            f.write(b"\n")

    def missing(self, pairs: Iterable[Pair]) -> list[Pair]:
        """The distinct pairs not in the cache, in first-seen order."""
        return [p for p in dict.fromkeys(pairs) if p not in self.scores]

    def score(self, pairs: Sequence[Pair], teacher: Teacher | None = None, chunk_size: int = 512) -> list[float]:
        """The score of every pair, scoring the missing ones with ``teacher`` (``chunk_size`` pairs per append)."""
        todo = self.missing(pairs)
        if todo:
            if teacher is None:
                a, b = todo[0]
                raise DataError(f"{self.path}: {len(todo)} of the {len(set(pairs))} pairs have no score from teacher "
                                f"'{self.teacher}' (first: {a!r} / {b!r}): give a teacher to compute them, or a "
                                f"teacher-score file that covers the training pairs.")
            if teacher.name != self.teacher:
                raise DataError(f"the cache holds teacher '{self.teacher}' but the teacher given is "
                                 f"'{teacher.name}'.")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(todo), chunk_size):
                self._append(todo[start:start + chunk_size], teacher)
        return [self.scores[p] for p in pairs]

    def _append(self, chunk: list[Pair], teacher: Teacher) -> None:
        values = teacher.score([a for a, _ in chunk], [b for _, b in chunk])
        if len(values) != len(chunk):
            raise ValueError(f"teacher '{teacher.name}' returned {len(values)} scores for {len(chunk)} pairs.")
        values = [_check_score(float(v), f"teacher '{teacher.name}' on {a!r} / {b!r}")
                  for v, (a, b) in zip(values, chunk)]
        lines = [json.dumps({"key": pair_key(a, b, self.teacher), "teacher": self.teacher, "anchor": a,
                             "positive": b, "teacher_score": v}, ensure_ascii=False) + "\n"
                 for (a, b), v in zip(chunk, values)]
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        self.scores.update(zip(chunk, values))
        self.computed += len(chunk)
