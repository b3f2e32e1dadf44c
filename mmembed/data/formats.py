"""Readers for the training formats. Each returns rows ``{"anchor", "positive"[, "negative"]}`` whose values are
``{"text": str | None, "image": str | None}`` (``negative`` may be a list of them; ``read_mmeb_train`` adds a
``caption`` key to every side; the shapes are typed in :mod:`mmembed.data.rows`), ready for ``datasets.Dataset``.
``read_multiturn`` returns multi-turn rows instead: ``{"image", "pairs": [{"query": [paraphrases], "positive",
"kind"}]}``. Every format by its ``train_format`` name: :mod:`mmembed.data.readers`.

Image paths are resolved inside a declared image root (a path that leaves it is an error). A bad record raises
:class:`DataError` with its file and line (``file:row N`` in a ``.parquet`` file, N counted from 0), or, with
``skip_bad=True``, is counted and reported in one warning. Files are JSON lines (UTF-8; a line that is not is a bad
record), or Parquet when the name ends in ``.parquet`` (read with pyarrow). A record's texts must be strings (a
number, an object or a lone surrogate such as ``"\\ud800"`` is a bad record), so every row a reader returns can be
stored and tokenized.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..textio import SICK_COLUMNS, iter_jsonl, read_text, resolve_image, sick_lines, text_lines
from ..textio import decode_line as _decode
from ..textio import parse_json_object as _parse_json
from .rows import Side, grace_row, row, side, text_row

logger = logging.getLogger(__name__)

__all__ = [
    "READERS",
    "SICK_COLUMNS",
    "DataError",
    "Rows",
    "iter_jsonl",
    "read_grace",
    "read_mmeb_train",
    "read_multiturn",
    "read_pairs",
    "read_sentences",
    "read_sick_triplets",
    "read_text",
    "read_triplets",
    "resolve_image",
    "sick_lines",
    "text_lines",
]


def _text(value: Any, where: str, name: str = "text") -> str | None:
    """A text field: a string (None when absent, empty or only spaces); anything else is a bad record."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: '{name}' must be a string, got {type(value).__name__} ({value!r:.40}).")
    if not value.strip():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{where}: '{name}' holds {value[exc.start]!r}, a lone surrogate, which is not text; fix the "
                        f"JSON escape (a character outside the BMP is a pair such as \\ud83d\\ude00).") from None
    return value


SIDE_KEYS = ("text", "image_path", "image")


def _side(value: Any, root: Path | None, where: str) -> Side:
    if isinstance(value, str):
        value = {"text": value}
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a string or {{'text', 'image_path'}}, got {type(value).__name__}.")
    unknown = sorted(set(value) - set(SIDE_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown}; a side is a string or {{'text', 'image_path'}}.")
    text = _text(value.get("text"), where)
    image = resolve_image(value.get("image_path") or value.get("image"), root, where)
    if text is None and image is None:
        raise DataError(f"{where}: neither text nor image.")
    return side(text, image)


def _raw_records(path: Path) -> Iterator[tuple[str, bytes | dict]]:
    """``(where, raw)`` per record: a JSON line's bytes (decoded and parsed by the caller, so that a bad line can be
    skipped) or, for a ``.parquet`` file, a row as a dict (``where`` = ``file:row N``, N from 0)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow comes with datasets (the train extra)
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'mmembed[train]').") from exc
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
            number = 0
            for batch in batches:
                for record in batch.to_pylist():
                    yield f"{path}:row {number}", record
                    number += 1
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a readable Parquet file ({exc}).") from exc
        return
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{number}", line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line


class Rows(list):
    """The rows a reader returned (a ``list``, equal to the plain list of the same rows) with ``where``: the
    ``file:line`` of each row, a parallel list, so that a check made later (:func:`mmembed.data.dataset.uniform_rows`,
    on a mixture of files) names the line. A slice keeps its rows' ``where``; :meth:`join` concatenates parts."""

    def __init__(self, rows: Iterable[dict] = (), where: Iterable[str | None] = ()) -> None:
        super().__init__(rows)
        self.where: list[str | None] = list(where)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return Rows(item, self.where[index]) if isinstance(index, slice) else item

    @classmethod
    def join(cls, parts: Sequence[list[dict]]) -> Rows:
        """The rows of ``parts`` one after another, with the ``where`` of those that have one (None for the
        others)."""
        return cls([r for p in parts for r in p],
                   [w for p in parts for w in (p.where if isinstance(p, Rows) and len(p.where) == len(p)
                                               else [None] * len(p))])


def _read(path: str | Path, parse: Callable[[dict, str], dict], skip_bad: bool) -> Rows:
    """Parse every record of a JSON-lines (or ``.parquet``) file; bad records raise with file:line, or are
    counted. The rows keep their file:line (:class:`Rows`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training file '{path}' does not exist.")
    rows, bad = Rows(), []
    for where, raw in _raw_records(path):
        try:
            rows.append(parse(_parse_json(_decode(raw, where), where) if isinstance(raw, bytes) else raw, where))
        except DataError as exc:
            if not skip_bad:
                raise
            bad.append(str(exc))
            continue
        rows.where.append(where)
    if bad:
        logger.warning("%s: skipped %d bad records (asked with skip_bad); first: %s", path, len(bad), bad[0])
    if not rows:
        raise DataError(f"{path}: no usable records.")
    return rows


def _sides(value: Any, root: Path | None, where: str) -> list[Side]:
    """One side or a list of them (None -> no side)."""
    values = value if isinstance(value, list) else [] if value is None else [value]
    return [_side(v, root, f"{where}[{k}]" if len(values) > 1 else where) for k, v in enumerate(values)]


def read_triplets(path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False) -> list[dict]:
    """LCO's JSON lines: ``{"anchor": {"text", "image_path"}, "positive": {...}, "negative": {...}}`` (strings allowed
    for text-only sides). ``negative`` is optional (absent, null or ``[]``: in-batch negatives only) and may be a list
    of any length, different from row to row. ``positive`` may be a list of several, the same number in every row of
    the file (a list of one is the single positive)."""
    root = Path(image_root) if image_root is not None else None
    first: list[tuple[int, str]] = []  # (number of positives, where) of the first good row

    def parse(record: dict, where: str) -> dict:
        missing = [k for k in ("anchor", "positive") if k not in record]
        if missing:
            raise DataError(f"{where}: missing {missing} (a triplet has 'anchor', 'positive' and 'negative').")
        anchor = _side(record["anchor"], root, f"{where} anchor")
        positives = _sides(record["positive"], root, f"{where} positive")
        if not positives:
            raise DataError(f"{where}: 'positive' is empty; give one positive (or a list of them).")
        if first and len(positives) != first[0][0]:
            raise DataError(f"{where}: {len(positives)} positives, but {first[0][1]} has {first[0][0]}; every row "
                            f"of a file needs the same number of positives.")
        negatives = _sides(record.get("negative"), root, f"{where} negative")
        if not first:
            first.append((len(positives), where))
        return row(anchor, positives[0] if len(positives) == 1 else positives, negatives or None)

    return _read(path, parse, skip_bad)


def read_pairs(path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False) -> list[dict]:
    """JSON lines ``{"query"|"anchor": ..., "positive"|"document": ...}``."""
    root = Path(image_root) if image_root is not None else None

    def parse(record: dict, where: str) -> dict:
        query = record.get("query", record.get("anchor"))
        positive = record.get("positive", record.get("document"))
        if query is None or positive is None:
            raise DataError(f"{where}: a pair needs 'query' (or 'anchor') and 'positive' (or 'document').")
        return row(_side(query, root, f"{where} query"), _side(positive, root, f"{where} positive"))

    return _read(path, parse, skip_bad)


IMAGE_TOKEN = "<|image_1|>"  # MMEB's Phi-3 image token, removed from texts (the template places the image)


def _clean_text(value: Any, where: str, name: str) -> str | None:
    """A text field without the Phi-3 image token, stripped; None when absent or empty."""
    value = _text(value, where, name)
    return _text(value.replace(IMAGE_TOKEN, "").strip(), where, name) if value is not None else None


def _as_list(value: Any, where: str, name: str) -> list:
    """A list-valued field: a list (or tuple), a stringified Python list such as ``"['a', 'b']"`` (parsed with
    ``ast.literal_eval``; a string that does not parse to a list of strings / lists / None is one plain value), a
    single value (-> ``[value]``), or None / ``""`` (-> ``[]``)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                parsed = None
            if isinstance(parsed, list) and all(x is None or isinstance(x, (str, list)) for x in parsed):
                return parsed
        return [value] if text else []
    raise DataError(f"{where}: '{name}' must be a list or a string, got {type(value).__name__}.")


def read_mmeb_train(path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False) -> list[dict]:
    """MMEB-train rows (JSON lines, or ``.parquet``, of the HF ``TIGER-Lab/MMEB-train`` columns): ``qry``,
    ``qry_image_path``, ``pos_text``, ``pos_image_path``, optional ``neg_text`` / ``neg_image_path``; the Phi-3
    image token ``<|image_1|>`` is removed from the texts (the image slot of the template places the image).

    MuCo's ``*_generated_sentence`` variants (HF ``naver-ai/M3T``, ``MMEB_train/``) are read too: the generated
    captions ``qry_sentence`` / ``pos_sentence`` go to ``row["anchor"]["caption"]`` / ``row["positive"]["caption"]``
    (every side of this reader has a ``caption`` key, None when absent), and ``neg_text`` / ``neg_image_path`` may be
    parallel lists or stringified Python lists (``ast.literal_eval``, never ``eval``): every negative is kept, in
    order, in ``row["negative"]``. One of the two lists may be empty / missing (text-only or image-only negatives)."""
    root = Path(image_root) if image_root is not None else None

    def side(text: Any, image: Any, caption: Any, where: str) -> dict:
        if image is not None and not isinstance(image, str):
            raise DataError(f"{where}: the image path must be a string, got {type(image).__name__}.")
        return {**_side({"text": _clean_text(text, where, "text"), "image_path": image}, root, where),
                "caption": _clean_text(caption, where, "caption")}

    def negatives(record: dict, where: str) -> list[dict]:
        texts = _as_list(record.get("neg_text"), where, "neg_text")
        images = _as_list(record.get("neg_image_path"), where, "neg_image_path")
        if texts and images and len(texts) != len(images):
            raise DataError(f"{where}: {len(texts)} neg_text but {len(images)} neg_image_path entries (parallel "
                            f"lists need the same length).")
        n = max(len(texts), len(images))
        texts, images = texts or [None] * n, images or [None] * n
        return [side(t, i, None, f"{where} neg[{k}]") for k, (t, i) in enumerate(zip(texts, images))]

    def parse(record: dict, where: str) -> dict:
        if "qry" not in record or "pos_text" not in record:
            raise DataError(f"{where}: an MMEB-train row needs 'qry' and 'pos_text'.")
        return row(side(record["qry"], record.get("qry_image_path"), record.get("qry_sentence"), f"{where} qry"),
                   side(record["pos_text"], record.get("pos_image_path"), record.get("pos_sentence"), f"{where} pos"),
                   negatives(record, where) or None)

    return _read(path, parse, skip_bad)


MULTITURN_COLUMNS: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path", "img_path"),
    "queries": ("queries", "qry"),
    "positives": ("positives", "pos", "pos_text"),
    "kinds": ("kinds",),
}
"""Where ``read_multiturn`` looks for each field of the parallel-list layout (first column present wins). The
column names of the released M3T parquet are NOT verified: pass ``columns=`` to name others."""


def _paraphrases(value: Any, where: str) -> list[str]:
    """A multi-turn query: one text or a list of paraphrases, each non-empty."""
    paraphrases = _as_list(value, where, "query")
    if not paraphrases:
        raise DataError(f"{where}: empty query.")
    out = []
    for k, text in enumerate(paraphrases):
        cleaned = _clean_text(text, f"{where} paraphrase {k}", "query")
        if cleaned is None:
            raise DataError(f"{where}: paraphrase {k} of the query is empty.")
        out.append(cleaned)
    return out


def _turn(query: Any, positive: Any, kind: Any, where: str) -> dict:
    """One (query, positive[, kind]) pair of a multi-turn record."""
    pos = _clean_text(positive, where, "positive")
    if pos is None:
        raise DataError(f"{where}: empty positive.")
    if kind is not None and not isinstance(kind, str):
        raise DataError(f"{where}: 'kind' must be a string, got {type(kind).__name__}.")
    return {"query": _paraphrases(query, where), "positive": pos, "kind": kind or None}


def read_multiturn(path: str | Path, image_root: str | Path | None = None, skip_bad: bool = False, *,
                   columns: dict[str, str | Sequence[str]] | None = None) -> list[dict]:
    """Multi-turn training data (MuCo / M3T): one record = one image and K >= 1 (query, positive) pairs about it.

    Two layouts, JSON lines or ``.parquet``:

    - ours (what ``mmembed.synthetic`` writes): ``{"image": str | null, "pairs": [{"query": str | [str, ...],
      "positive": str, "kind": str (optional)}, ...]}``;
    - M3T-style parallel lists: the image under ``image`` / ``image_path`` / ``img_path``, the queries under
      ``queries`` / ``qry``, the positives under ``positives`` / ``pos`` / ``pos_text``, optional kinds under
      ``kinds`` (:data:`MULTITURN_COLUMNS`); ``columns`` maps any of ``image``, ``queries``, ``positives``,
      ``kinds`` to other column name(s). Lists may be stringified Python lists (``ast.literal_eval``).

    A query entry may be a list of paraphrases; all are kept (the collator samples one). Returns rows
    ``{"image": absolute path inside image_root | None, "pairs": [{"query": [str, ...], "positive": str,
    "kind": str | None}]}`` with the Phi-3 image token ``<|image_1|>`` removed from every text. Records without
    pairs, with an empty text, an image outside the root or missing, or lists of different lengths are bad records
    (``DataError`` naming ``file:line`` / ``file:row N``, or counted with ``skip_bad``)."""
    root = Path(image_root) if image_root is not None else None
    names = {role: tuple(candidates) for role, candidates in MULTITURN_COLUMNS.items()}
    for role, given in (columns or {}).items():
        if role not in names:
            raise ValueError(f"read_multiturn: unknown column role {role!r}; roles are {sorted(names)}.")
        names[role] = (given,) if isinstance(given, str) else tuple(given)

    def column(record: dict, role: str) -> tuple[str | None, Any]:
        for name in names[role]:
            if name in record:
                return name, record[name]
        return None, None

    def parse(record: dict, where: str) -> dict:
        image_key, image = column(record, "image")
        if "pairs" in record:
            given = record["pairs"]
            if not isinstance(given, list):
                raise DataError(f"{where}: 'pairs' must be a list of {{'query', 'positive'}} objects.")
            pairs = []
            for k, p in enumerate(given):
                if not isinstance(p, dict) or "query" not in p or "positive" not in p:
                    raise DataError(f"{where} pairs[{k}]: a pair is an object with 'query' and 'positive'.")
                pairs.append(_turn(p["query"], p["positive"], p.get("kind"), f"{where} pairs[{k}]"))
        else:
            q_key, queries = column(record, "queries")
            p_key, positives = column(record, "positives")
            if q_key is None or p_key is None:
                raise DataError(f"{where}: neither 'pairs' nor query / positive columns (looked for "
                                f"{list(names['queries'])} and {list(names['positives'])}; name others with "
                                f"columns=...).")
            queries, positives = _as_list(queries, where, q_key), _as_list(positives, where, p_key)
            k_key, kinds = column(record, "kinds")
            kinds = _as_list(kinds, where, k_key) if k_key is not None else []
            if len(queries) != len(positives) or (kinds and len(kinds) != len(queries)):
                sizes = f"{len(queries)} {q_key}, {len(positives)} {p_key}"
                sizes += f", {len(kinds)} {k_key}" if kinds else ""
                raise DataError(f"{where}: parallel lists of different lengths ({sizes}).")
            kinds = kinds or [None] * len(queries)
            pairs = [_turn(q, p, c, f"{where} turn {k}")
                     for k, (q, p, c) in enumerate(zip(queries, positives, kinds))]
        if not pairs:
            raise DataError(f"{where}: no (query, positive) pairs.")
        if isinstance(image, list) and len(image) == 1:
            image = image[0]
        if image is not None and not isinstance(image, str):
            raise DataError(f"{where}: '{image_key}' must be an image path (a string), got {type(image).__name__}.")
        return {"image": resolve_image(image, root, where), "pairs": pairs}

    return _read(path, parse, skip_bad)


def read_grace(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """GRACE's supervised JSON lines ``{"query", "positive", "negative"[, "source"]}`` (strings; ``negative``
    optional, but given in every row of a file or in none) as ``{"text": positive, "query", "negative"?}``: the policy
    writes its rationale for the positive."""
    first: list[tuple[bool, str]] = []  # (has a negative, where) of the first good row

    def parse(record: dict, where: str) -> dict:
        missing = [k for k in ("query", "positive") if not isinstance(record.get(k), str) or not record[k].strip()]
        if missing:
            raise DataError(f"{where}: {missing} missing or not a non-empty string (a GRACE row has 'query', "
                            f"'positive' and optionally 'negative').")
        text, query = _text(record["positive"], where, "positive"), _text(record["query"], where, "query")
        if record.get("negative") is not None and _text(record["negative"], where, "negative") is None:
            raise DataError(f"{where}: 'negative' must be a non-empty string.")
        out = grace_row(text, query, record.get("negative"))
        if first and first[0][0] != ("negative" in out):
            raise DataError(f"{where}: {'a' if 'negative' in out else 'no'} 'negative', but {first[0][1]} has "
                            f"{'one' if first[0][0] else 'none'}; a GRACE file gives every row a negative or "
                            f"none.")
        if not first:
            first.append(("negative" in out, where))
        return out

    return _read(path, parse, skip_bad)


def read_sentences(path: str | Path) -> list[dict]:
    """One sentence a line (unsupervised: the sentence is its own positive, as SimCSE); blank lines are skipped."""
    lines = [line.strip() for _, line in text_lines(path) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no sentences (one sentence a line, UTF-8).")
    return [text_row(s, s) for s in lines]


SICK_SPLITS = {"train": "SICK_train.txt", "trial": "SICK_trial.txt"}
def _sick_pairs(path: Path) -> Iterator[tuple[str, str, str]]:
    """``(sentence A, sentence B, judgment)`` per line of a SICK file."""
    for where, (first, second, judgment) in sick_lines(path, ("sentence_A", "sentence_B", "entailment_judgment")):
        if not first.strip() or not second.strip():
            raise DataError(f"{where}: empty sentence; remove the line or fill in both sentences.")
        yield first, second, judgment


def read_sick_triplets(folder: str | Path, split: str = "train") -> list[dict]:
    """(sentence, entailed sentence, contradicting sentence) triplets from SICK, on the SimCSE / LCO NLI pattern.

    ``folder`` holds ``SICK_train.txt`` / ``SICK_trial.txt`` (or is such a file). For each ENTAILMENT pair (A, B): if
    some sentence contradicts A (CONTRADICTION is symmetric), the triplet is (A, B, that sentence); otherwise, if one
    contradicts B, (B, A, it). Pairs with no contradiction are left out.
    """
    if split not in SICK_SPLITS:
        raise DataError(f"SICK split {split!r}: choose one of {sorted(SICK_SPLITS)}.")
    path = Path(folder) if Path(folder).is_file() else Path(folder) / SICK_SPLITS[split]
    if not path.is_file():
        raise DataError(f"{path} does not exist: give a SICK folder holding {SICK_SPLITS[split]} (or the file).")
    entailments: list[tuple[str, str]] = []
    contradictions: dict[str, list[str]] = {}
    for first, second, judgment in _sick_pairs(path):
        if judgment == "ENTAILMENT":
            entailments.append((first, second))
        elif judgment == "CONTRADICTION":
            contradictions.setdefault(first, []).append(second)
            contradictions.setdefault(second, []).append(first)
    rows = []
    for k, (first, second) in enumerate(entailments):
        anchor, positive = (first, second) if first in contradictions else (second, first)
        negatives = contradictions.get(anchor)
        if negatives:
            rows.append(text_row(anchor, positive, negatives[k % len(negatives)]))
    if not rows:
        raise DataError(f"{path}: no triplets (no ENTAILMENT pair has a sentence with a CONTRADICTION); train on "
                        f"another split or format.")
    return rows


READERS = {"triplets": read_triplets, "pairs": read_pairs, "mmeb": read_mmeb_train, "multiturn": read_multiturn}
"""``--train_format`` name -> reader. ``multiturn`` rows are not anchor / positive rows: they need a multi-turn
collator, not ``to_dataset`` + ``ContrastiveCollator``."""
