"""Reading the files every layer reads: UTF-8 text lines, JSON-lines records, SICK's tab-separated columns, image
paths confined to a declared root, and the distinct values of tab-separated columns (benchmark sentence pools).
Every problem raises :class:`~mmembed.errors.DataError` (or the subclass a caller passes as ``error``) naming the
file and line. Training readers (:mod:`mmembed.data.formats`) and evaluation suites (:mod:`mmembed.eval`) both build
on this module, so evaluation does not import ``data``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import DataError

__all__ = ["SICK_COLUMNS", "decode_line", "distinct_fields", "iter_jsonl", "parse_json_object", "read_text",
           "resolve_image", "sick_lines", "text_lines"]


def decode_line(raw: bytes, where: str, error: type[DataError] = DataError) -> str:
    """A line's bytes as UTF-8 text; bytes that are not UTF-8 raise ``error`` naming ``where`` and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line); "
                    f"save the file as UTF-8.") from None


def text_lines(path: str | Path, error: type[DataError] = DataError) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for every line of a UTF-8 text file, without its line break (``\\n`` or ``\\r\\n``;
    a byte-order mark at the start is dropped). A missing file, or a line that is not UTF-8, raises ``error`` (a
    :class:`DataError`) naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist (or is not a file).")
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = decode_line(raw, f"{path}:{number}", error).rstrip("\r\n")
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def read_text(path: str | Path, error: type[DataError] = DataError) -> str:
    """The whole of a UTF-8 text file (a byte-order mark at the start dropped); a missing file or bytes that are not
    UTF-8 raise ``error`` (a :class:`DataError`) naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist (or is not a file).")
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        decode_line(data[line_start: exc.end], f"{path}:{number}", error)
        raise  # pragma: no cover - decode_line raised


def resolve_image(value: str | None, root: Path | None, where: str) -> str | None:
    """An image path from a record, resolved inside ``root`` (required when the record names an image)."""
    if not value:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: the image path must be a string, got {type(value).__name__} ({value!r:.40}).")
    if root is None:
        raise DataError(f"{where}: the record names image '{value}' but no image root was given (image_root=...).")
    path = (root / value).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{where}: image path '{value}' leaves the image root {root}.")
    if not path.is_file():
        raise DataError(f"{where}: image file '{path}' does not exist.")
    return str(path)


def parse_json_object(line: str, where: str, error: type[DataError] = DataError) -> dict:
    """One JSON line as a dict; invalid JSON or a value that is not an object raises ``error`` naming ``where``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON ({exc.msg}).") from exc
    if not isinstance(record, dict):
        raise error(f"{where}: a record must be a JSON object.")
    return record


def iter_jsonl(path: str | Path, error: type[DataError] = DataError) -> Iterator[tuple[str, dict]]:
    """``(file:line, record)`` for each non-empty line of a JSON-lines file; a line that is not UTF-8 or not a JSON
    object raises ``error`` (a :class:`DataError`) naming its file and line."""
    for number, line in text_lines(path, error):
        if line.strip():
            where = f"{path}:{number}"
            yield where, parse_json_object(line, where, error)


#: the header of a SICK file (tab-separated); readers take the columns they need by name
SICK_COLUMNS = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment")


def sick_lines(path: str | Path, columns: Sequence[str],
               error: type[DataError] = DataError) -> Iterator[tuple[str, list[str]]]:
    """``(file:line, [the value of each of columns])`` for each non-blank line of a SICK file after its header
    (tab-separated, :data:`SICK_COLUMNS`, in any order). A header without one of ``columns`` or a line with too few
    fields raises ``error`` naming the file and line."""
    lines = text_lines(path, error)
    header = next(lines, (1, ""))[1].split("\t")
    absent = [c for c in columns if c not in header]
    if absent:
        raise error(f"{path}:1: the header lacks {absent} (SICK: {', '.join(SICK_COLUMNS)}, tab-separated).")
    index = [header.index(c) for c in columns]
    for number, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) <= max(index):
            raise error(f"{path}:{number}: {len(fields)} fields, expected at least {max(index) + 1}.")
        yield f"{path}:{number}", [fields[i] for i in index]


def distinct_fields(path: str | Path, fields: slice, n: int) -> list[str]:
    """The first ``n`` distinct non-empty values of the tab-separated ``fields`` of a UTF-8 text file, in file order
    and as written (no normalisation; quotes are literal): e.g. ``slice(5, 7)`` of STS-B train, the pool of sentences
    the speed benchmarks encode (``bench/encode.py``, ``bench/serve.py``). Reading stops once ``n`` are found; a file
    that is missing or not UTF-8 raises :class:`DataError` naming it (text mode reads in blocks: no line number)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist (or is not a file).")
    seen: dict[str, None] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                for value in line.rstrip("\n").split("\t")[fields]:
                    if value and len(seen) < n:
                        seen.setdefault(value, None)
                if len(seen) >= n:
                    break
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); re-save the file as UTF-8.") from None
    return list(seen)
