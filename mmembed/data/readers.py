"""Every training-data format by its ``train_format`` name, and the mixture reader every recipe uses.

| name | file | rows (:mod:`mmembed.data.rows`) |
|---|---|---|
| ``triplets`` | LCO JSON lines ``{"anchor", "positive", "negative"?}`` | :class:`Row` |
| ``pairs`` | JSON lines ``{"query"/"anchor", "positive"/"document"}`` | :class:`Row` |
| ``mmeb`` | MMEB-train JSON lines or ``.parquet`` | :class:`Row` (sides with ``caption``) |
| ``multiturn`` | MuCo / M3T JSON lines or ``.parquet`` | :class:`MultiTurnRow` |
| ``sick`` | a SICK folder (or ``SICK_train.txt``) -> NLI triplets | :class:`Row` with one negative |
| ``sentences`` | one sentence a line | :class:`Row`, the sentence its own positive |
| ``documents`` | CCP JSON lines ``{"sentences": [...], "group": ...}`` | :class:`DocumentRow` |
| ``stsb`` | an STS-B csv (SentEval layout) | :class:`Row` with ``score`` = gold / 5 |
| ``sick_relatedness`` | a SICK folder or file | :class:`Row` with ``score`` = (relatedness - 1) / 4 |
| ``teacher_scores`` | a teacher-score file (``data_cards/teacher_scores.md``) | :class:`Row` with ``teacher_score`` |
| ``grace`` | GRACE JSON lines ``{"query", "positive", "negative"?}`` | :class:`GraceRow` |

:func:`read_rows` reads one file in a format, :func:`read_parts` a ``train_file`` of several (comma-separated, or a
folder of ``*.jsonl`` for the JSON-lines formats): a mixture, one list of rows per file. A reader is added with
:func:`register_reader`. The file readers evaluation also needs live in the low modules :mod:`mmembed.textio` and
:mod:`mmembed.stsio` (so ``eval`` imports nothing from ``data``); this module registers them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from ..errors import ConfigError, DataError
from ..stsio import SICK_FILES, read_sick, read_sts_benchmark
from ..textio import text_lines
from . import formats
from .rows import Row, row, side, text_row
from .teacher_scores import read_teacher_scores

__all__ = ["FORMATS", "DocumentRow", "ReaderSpec", "document_groups", "get_reader", "read_documents", "read_parts",
           "read_rows", "read_teacher_score_rows", "reader_names", "register_reader"]

#: ``reader(path, image_root, skip_bad_records) -> rows``
Reader = Callable[[str, "str | Path | None", bool], list]


@dataclass(frozen=True)
class ReaderSpec:
    """A registered format: its reader, whether a folder given as ``train_file`` is a mixture of its ``*.jsonl``
    files (``folder_mixture``), and the kind of rows it returns (``rows``: ``contrastive``, ``multiturn``,
    ``documents`` or ``grace``)."""

    name: str
    read: Reader
    folder_mixture: bool = False
    rows: str = "contrastive"


FORMATS: dict[str, ReaderSpec] = {}
"""``train_format`` name -> :class:`ReaderSpec`, in registration order (:func:`reader_names`)."""


def register_reader(name: str, *, folder_mixture: bool = False, rows: str = "contrastive"
                    ) -> Callable[[Reader], Reader]:
    """Decorator: register ``reader(path, image_root, skip_bad_records) -> rows`` as the format ``name`` (a name
    registered twice is a ``ValueError``)."""
    def decorate(reader: Reader) -> Reader:
        if name in FORMATS:
            raise ValueError(f"train format {name!r} is already registered ({FORMATS[name].read.__qualname__}).")
        FORMATS[name] = ReaderSpec(name, reader, folder_mixture, rows)
        return reader

    return decorate


def reader_names() -> tuple[str, ...]:
    """Every registered ``train_format`` name, in registration order."""
    return tuple(FORMATS)


def get_reader(name: str) -> ReaderSpec:
    """The format ``name``; an unknown name is a :class:`ConfigError` naming the choices."""
    if name not in FORMATS:
        raise ConfigError(f"train_format={name!r}; choose one of {sorted(FORMATS)}.")
    return FORMATS[name]


def read_rows(path: str | Path, format: str, *, image_root: str | Path | None = None,
              skip_bad_records: bool = False, max_rows: int | None = None) -> list:
    """The rows of one file (or SICK folder) in ``format``, the first ``max_rows`` of them when given."""
    rows = get_reader(format).read(str(path), image_root, skip_bad_records)
    return rows[:max_rows] if max_rows else rows


def _entries(train_file: str, format: str) -> list[tuple[str, str]]:
    """``(file, format)`` per comma-separated entry of ``train_file``; ``format`` is one name for all, or one per
    entry (comma-separated); a folder of a JSON-lines format stands for its ``*.jsonl`` files in name order."""
    entries = [p.strip() for p in train_file.split(",") if p.strip()]
    formats = [f.strip() for f in format.split(",")]
    if len(formats) == 1:
        formats = formats * len(entries)
    elif len(formats) != len(entries):
        raise ConfigError(f"{len(entries)} train files but {len(formats)} train formats: give one format, or one "
                          f"per file.")
    out = []
    for entry, name in zip(entries, formats):
        if Path(entry).is_dir() and get_reader(name).folder_mixture:
            files = sorted(str(f) for f in Path(entry).glob("*.jsonl"))
            if not files:
                raise DataError(f"train_file folder {entry} holds no *.jsonl files.")
            out += [(f, name) for f in files]
        else:
            out.append((entry, name))
    return out


def read_parts(train_file: str | None, format: str, *, image_root: str | Path | None = None,
               skip_bad_records: bool = False, max_rows: int | None = None,
               dataset_weights: list[float] | None = None) -> list[list]:
    """The rows of each training file: ``train_file`` may list several, comma-separated, or name a folder, whose
    ``*.jsonl`` files are taken in name order (for the JSON-lines formats; a SICK folder is one dataset): a mixture.
    ``max_rows`` applies to each file; ``dataset_weights``, when given, must have one weight per file."""
    if train_file is None:
        raise ConfigError("no training data: set train_file (and train_format).")
    entries = _entries(train_file, format)
    if dataset_weights is not None and len(dataset_weights) != len(entries):
        raise ConfigError(f"{len(dataset_weights)} dataset_weights for {len(entries)} train files.")
    return [read_rows(path, name, image_root=image_root, skip_bad_records=skip_bad_records, max_rows=max_rows)
            for path, name in entries]


class DocumentRow(TypedDict):
    """A CCP document: its sentences in order and its group (e.g. its language; ``""`` when the line has none)."""

    sentences: list[str]
    group: str


def _documents(path: str | Path) -> list[DocumentRow]:
    """CCP documents: JSON lines ``{"sentences": [...], "group": "en"}``; a bad line names ``file:line``."""
    documents: list[DocumentRow] = []
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            sentences = [str(s) for s in record["sentences"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{number}: a document line is {{\"sentences\": [...], \"group\": ...}} "
                            f"({exc}).") from exc
        documents.append({"sentences": sentences, "group": str(record.get("group", ""))})
    return documents


def document_groups(documents: list[DocumentRow]) -> tuple[list[list[str]], list[int], list[str]]:
    """``(documents, group ids, group names)``: each document's sentences and its group's id, ids numbered in
    first-seen order (the input of :func:`mmembed.data.views.context_pairs`)."""
    names: dict[str, int] = {}
    groups = [names.setdefault(d["group"], len(names)) for d in documents]
    return [d["sentences"] for d in documents], groups, list(names)


def read_documents(path: str | Path) -> tuple[list[list[str]], list[int], list[str]]:
    """CCP documents: JSON lines ``{"sentences": [...], "group": "en"}`` -> (documents, group ids, group names)."""
    return document_groups(_documents(path))


def _graded(first: list[str], second: list[str], scores: Any) -> list[Row]:
    return [text_row(a, b, score=float(g)) for a, b, g in zip(first, second, scores)]


def read_teacher_score_rows(path: str | Path, teacher: str | None = None) -> list[Row]:
    """The pairs of a teacher-score file with their ``teacher_score`` (only ``teacher``'s records when given)."""
    return [row(side(a), side(b), teacher_score=s) for (a, b), s in read_teacher_scores(path, teacher).items()]


def _register_builtin() -> None:
    json_lines = {"triplets": formats.read_triplets, "pairs": formats.read_pairs, "mmeb": formats.read_mmeb_train}
    for name, reader in json_lines.items():
        register_reader(name, folder_mixture=True)(reader)
    register_reader("multiturn", folder_mixture=True, rows="multiturn")(formats.read_multiturn)
    register_reader("sick")(lambda path, image_root, skip_bad: formats.read_sick_triplets(path))
    register_reader("sentences")(lambda path, image_root, skip_bad: formats.read_sentences(path))
    register_reader("documents", rows="documents")(lambda path, image_root, skip_bad: _documents(path))

    def stsb(path: str, image_root: Any, skip_bad: bool) -> list[Row]:
        first, second, gold = read_sts_benchmark(path)
        return _graded(first, second, gold / 5.0)

    def sick_relatedness(path: str, image_root: Any, skip_bad: bool) -> list[Row]:
        first, second, gold = read_sick(Path(path) / SICK_FILES["train"] if Path(path).is_dir() else Path(path))
        return _graded(first, second, (gold - 1.0) / 4.0)

    register_reader("stsb")(stsb)
    register_reader("sick_relatedness")(sick_relatedness)
    register_reader("teacher_scores")(lambda path, image_root, skip_bad: read_teacher_score_rows(path))
    register_reader("grace", rows="grace")(lambda path, image_root, skip_bad: formats.read_grace(path, skip_bad))


_register_builtin()
