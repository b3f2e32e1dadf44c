"""The one reader of BEIR-layout folders, for local retrieval (:mod:`mmembed.eval.retrieval`) and mteb's local
retrieval tasks (:mod:`mmembed.eval.mteb.tasks`).

A folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl`` (``{"_id", "text"}``) and
``qrels/<split>.tsv`` (``query-id  corpus-id  score``, after an optional header line). With ``images=True`` a
corpus or query line may also carry ``"image"``: a path inside the folder, and ``text`` becomes optional.

Every line is checked before anything is encoded: a line that is not UTF-8 or not a JSON object, a missing or
non-string field, an ``_id`` that is not a string (or an integer), a duplicate id, an entry with nothing to embed,
a qrels line with fewer than three fields or a score that is not a finite number, and (``unknown_ids="error"``) a
qrels line naming an unknown query or document raise ``error`` (a :class:`~mmembed.errors.DataError`) naming the
file and line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import DataError
from ..textio import iter_jsonl, resolve_image, text_lines

__all__ = ["BeirEntry", "BeirFolder", "beir_files", "read_beir_folder"]


class BeirEntry(NamedTuple):
    """One corpus document or query: its ``file:line``, text (None when absent), title (``""`` for queries and
    documents without one) and image (a resolved path, or None)."""

    where: str
    text: str | None
    title: str
    image: str | None


@dataclass
class BeirFolder:
    """A BEIR folder's entries in file order, its judgments ``{qid: {doc_id: relevance}}`` (only pairs between known
    entries), the ``file:line`` of the qrels lines left out for naming an unknown id (``unknown_ids="skip"``), and
    its three files."""

    corpus: dict[str, BeirEntry]
    queries: dict[str, BeirEntry]
    qrels: dict[str, dict[str, int]]
    files: list[Path]
    skipped: list[str] = field(default_factory=list)


def beir_files(folder: str | Path, split: str = "test") -> list[Path]:
    """``[corpus.jsonl, queries.jsonl, qrels/<split>.tsv]`` of ``folder``."""
    folder = Path(folder)
    return [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]


def _entries(path: Path, folder: Path, kind: str, error: type[DataError], images: bool) -> dict[str, BeirEntry]:
    """``{id: entry}`` of ``corpus.jsonl`` (``kind="corpus"``) or ``queries.jsonl`` (``kind="query"``)."""
    required = ("_id",) if images else ("_id", "text")
    shape = '{"_id", "title", "text"}' if kind == "corpus" else '{"_id", "text"}'
    shape += ', optionally with "image"' if images else ""
    entries: dict[str, BeirEntry] = {}
    for where, record in iter_jsonl(path, error):
        absent = [k for k in required if k not in record]
        if absent:
            raise error(f"{where}: missing field(s) {absent} (a BEIR {kind} line is {shape}).")
        for key in ("text", "title", "image") if images else ("text", "title"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise error(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}.")
        if not isinstance(record["_id"], (str, int)) or isinstance(record["_id"], bool):
            raise error(f"{where}: '_id' must be a string, got {type(record['_id']).__name__}.")
        key = str(record["_id"])
        if key in entries:
            raise error(f"{where}: duplicate _id {key!r} (first at {entries[key].where}).")
        text, title = record.get("text"), (record.get("title") or "") if kind == "corpus" else ""
        image = resolve_image(record.get("image"), folder, where) if images else None
        if not f"{title} {text or ''}".strip() and image is None:
            nothing = "neither text nor title" if kind == "corpus" else "an empty text"
            raise error(f"{where}: {'document' if kind == 'corpus' else kind} {key!r} has {nothing}"
                        f"{' and no image' if images else ''}; remove it or fill it in.")
        entries[key] = BeirEntry(where, text, title, image)
    if not entries:
        raise error(f"{path}: no {kind} entries.")
    return entries


def _qrels(path: Path, queries: dict, corpus: dict, error: type[DataError], unknown_ids: str
           ) -> tuple[dict[str, dict[str, int]], list[str]]:
    """``({qid: {doc_id: relevance}}, skipped file:line)`` from a BEIR qrels TSV (an optional ``query-id`` header
    first)."""
    qrels: dict[str, dict[str, int]] = {}
    skipped: list[str] = []
    for number, line in text_lines(path, error):
        parts = line.split("\t")
        if not line.strip() or (number == 1 and parts[0].strip().lower() == "query-id"):  # the header, if any
            continue
        if len(parts) < 3:
            raise error(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score), got "
                        f"{len(parts)}.")
        qid, doc = parts[0].strip(), parts[1].strip()
        try:
            value = float(parts[2])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise error(f"{path}:{number}: score {parts[2]!r} is not a finite number.")
        if qid not in queries or doc not in corpus:
            if unknown_ids == "skip":
                skipped.append(f"{path}:{number}")
                continue
            raise error(f"{path}:{number}: {'query ' + qid if qid not in queries else 'document ' + doc}"
                        f" is not in {'queries' if qid not in queries else 'corpus'}.jsonl.")
        qrels.setdefault(qid, {})[doc] = int(value)
    return qrels, skipped


def read_beir_folder(folder: str | Path, split: str = "test", *, images: bool = False,
                     unknown_ids: str = "error", error: type[DataError] = DataError) -> BeirFolder:
    """Read and check a BEIR-layout folder (see the module docstring). ``images``: corpus and query lines may name
    an image (resolved inside ``folder``); ``unknown_ids``: a qrels line naming an unknown query or document is an
    ``"error"``, or ``"skip"`` (left out; its ``file:line`` in :attr:`BeirFolder.skipped`). A missing file is an
    ``error`` naming it."""
    if unknown_ids not in ("error", "skip"):
        raise ValueError(f"unknown_ids={unknown_ids!r}: use 'error' or 'skip'.")
    folder = Path(folder)
    files = beir_files(folder, split)
    for path in files:
        if not path.is_file():
            raise error(f"{folder} is not a BEIR folder: {path.relative_to(folder)} is missing (expected "
                        f"corpus.jsonl, queries.jsonl and qrels/{split}.tsv).")
    corpus = _entries(files[0], folder, "corpus", error, images)
    queries = _entries(files[1], folder, "query", error, images)
    qrels, skipped = _qrels(files[2], queries, corpus, error, unknown_ids)
    return BeirFolder(corpus, queries, qrels, files, skipped)
