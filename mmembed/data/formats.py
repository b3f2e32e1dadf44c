"""Readers for the training formats. Each returns rows ``{"anchor", "positive"[, "negative"]}`` whose values are
``{"text": str | None, "image": str | None}`` (``negative`` may be a list of them), ready for ``datasets.Dataset``.

Image paths are resolved inside a declared image root (a path that leaves it is an error). A bad record raises
:class:`DataError` with its file and line, or, with ``skip_bad=True``, is counted and reported in one warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import MMEmbedError

logger = logging.getLogger(__name__)


class DataError(MMEmbedError, ValueError):
    """A training or evaluation record that cannot be used; the message names its file and line."""


def resolve_image(value: str | None, root: Path | None, where: str) -> str | None:
    """An image path from a record, resolved inside ``root`` (required when the record names an image)."""
    if not value:
        return None
    if root is None:
        raise DataError(f"{where}: the record names image '{value}' but no image root was given (image_root=...).")
    path = (root / value).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{where}: image path '{value}' leaves the image root {root}.")
    if not path.is_file():
        raise DataError(f"{where}: image file '{path}' does not exist.")
    return str(path)


def _side(value: Any, root: Path | None, where: str) -> dict[str, str | None]:
    if isinstance(value, str):
        value = {"text": value}
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a string or {{'text', 'image_path'}}, got {type(value).__name__}.")
    text = value.get("text") or None
    image = resolve_image(value.get("image_path") or value.get("image"), root, where)
    if text is None and image is None:
        raise DataError(f"{where}: neither text nor image.")
    return {"text": text, "image": image}


def _parse_json(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg}).") from exc
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object.")
    return record


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``(file:line, record)`` for each non-empty line of a JSON-lines file; a line that is not a JSON object raises
    :class:`DataError` naming its file and line."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                where = f"{path}:{number}"
                yield where, _parse_json(line, where)


def _read(path: str | Path, parse: Callable[[dict, str], dict], skip_bad: bool) -> list[dict]:
    """Parse every non-empty line of a JSON-lines file; bad records raise with file:line, or are counted."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training file '{path}' does not exist.")
    rows, bad = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                rows.append(parse(_parse_json(line, where), where))
            except DataError as exc:
                if not skip_bad:
                    raise
                bad.append(str(exc))
    if bad:
        logger.warning("%s: skipped %d bad records (asked with skip_bad); first: %s", path, len(bad), bad[0])
    if not rows:
        raise DataError(f"{path}: no usable records.")
    return rows


def read_triplets(path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False) -> list[dict]:
    """LCO's JSON lines: ``{"anchor": {"text", "image_path"}, "positive": {...}, "negative": {...}}`` (strings allowed
    for text-only sides; ``negative`` optional; ``positive`` / ``negative`` may be lists for several per row)."""
    root = Path(image_root) if image_root is not None else None

    def parse(record: dict, where: str) -> dict:
        missing = [k for k in ("anchor", "positive") if k not in record]
        if missing:
            raise DataError(f"{where}: missing {missing} (a triplet has 'anchor', 'positive' and 'negative').")
        row = {"anchor": _side(record["anchor"], root, f"{where} anchor")}
        positive = record["positive"]
        row["positive"] = ([_side(p, root, f"{where} positive") for p in positive] if isinstance(positive, list)
                           else _side(positive, root, f"{where} positive"))
        if record.get("negative") is not None:
            negatives = record["negative"] if isinstance(record["negative"], list) else [record["negative"]]
            row["negative"] = [_side(n, root, f"{where} negative") for n in negatives]
        return row

    return _read(path, parse, skip_bad)


def read_pairs(path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False) -> list[dict]:
    """JSON lines ``{"query"|"anchor": ..., "positive"|"document": ...}``."""
    root = Path(image_root) if image_root is not None else None

    def parse(record: dict, where: str) -> dict:
        query = record.get("query", record.get("anchor"))
        positive = record.get("positive", record.get("document"))
        if query is None or positive is None:
            raise DataError(f"{where}: a pair needs 'query' (or 'anchor') and 'positive' (or 'document').")
        return {"anchor": _side(query, root, f"{where} query"), "positive": _side(positive, root, f"{where} positive")}

    return _read(path, parse, skip_bad)


def read_mmeb_train(path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False) -> list[dict]:
    """MMEB-train rows (JSON lines of the HF ``TIGER-Lab/MMEB-train`` columns): ``qry``, ``qry_image_path``,
    ``pos_text``, ``pos_image_path``, optional ``neg_text`` / ``neg_image_path``; the Phi-3 image token
    ``<|image_1|>`` is removed from the texts (the image slot of the template places the image)."""
    root = Path(image_root) if image_root is not None else None

    def side(text: Any, image: Any, where: str) -> dict:
        text = (text or "").replace("<|image_1|>", "").strip() or None
        return _side({"text": text, "image_path": image}, root, where)

    def parse(record: dict, where: str) -> dict:
        if "qry" not in record or "pos_text" not in record:
            raise DataError(f"{where}: an MMEB-train row needs 'qry' and 'pos_text'.")
        row = {"anchor": side(record["qry"], record.get("qry_image_path"), f"{where} qry"),
               "positive": side(record["pos_text"], record.get("pos_image_path"), f"{where} pos")}
        if record.get("neg_text") or record.get("neg_image_path"):
            row["negative"] = [side(record.get("neg_text"), record.get("neg_image_path"), f"{where} neg")]
        return row

    return _read(path, parse, skip_bad)


def read_sentences(path: str | Path) -> list[dict]:
    """One sentence a line (unsupervised: the sentence is its own positive, as SimCSE)."""
    lines = [s.strip() for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    return [{"anchor": {"text": s, "image": None}, "positive": {"text": s, "image": None}} for s in lines]


def read_sick_triplets(folder: str | Path, split: str = "train") -> list[dict]:
    """(sentence, entailed sentence, contradicting sentence) triplets from SICK, on the SimCSE / LCO NLI pattern.

    For each ENTAILMENT pair (A, B): if some sentence contradicts A (CONTRADICTION is symmetric), the triplet is
    (A, B, that sentence); otherwise, if one contradicts B, (B, A, it). Pairs with no contradiction are left out.
    """
    path = Path(folder) / {"train": "SICK_train.txt", "trial": "SICK_trial.txt"}[split]
    entailments: list[tuple[str, str]] = []
    contradictions: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        a, b, judgment = header.index("sentence_A"), header.index("sentence_B"), header.index("entailment_judgment")
        for number, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < len(header):
                raise DataError(f"{path}:{number}: {len(fields)} fields, expected {len(header)}.")
            if fields[judgment] == "ENTAILMENT":
                entailments.append((fields[a], fields[b]))
            elif fields[judgment] == "CONTRADICTION":
                contradictions.setdefault(fields[a], []).append(fields[b])
                contradictions.setdefault(fields[b], []).append(fields[a])
    rows = []
    for k, (first, second) in enumerate(entailments):
        anchor, positive = (first, second) if first in contradictions else (second, first)
        negatives = contradictions.get(anchor)
        if negatives:
            rows.append({"anchor": {"text": anchor, "image": None}, "positive": {"text": positive, "image": None},
                         "negative": [{"text": negatives[k % len(negatives)], "image": None}]})
    return rows


READERS = {"triplets": read_triplets, "pairs": read_pairs, "mmeb": read_mmeb_train}
