"""Reading an index corpus: one record a line (JSON lines) or a row (``.parquet``, when pyarrow is installed), each
``{"id": ..., "text": ... and/or "image": ...}`` (other keys are ignored), or a folder of images with its manifest
(:data:`FOLDER_MANIFESTS`: Hugging Face's ``imagefolder`` ``metadata.jsonl``, whose ``file_name`` is the image, and
the record's id when it has none).

:meth:`Corpus.open` reads the whole file once: it checks every record (a bad one raises
:class:`~mmembed.errors.DataError` naming ``file:line``, or ``file:row N`` in Parquet, N from 0), hashes the file's
bytes and remembers where each record starts, so that :meth:`Corpus.records` later reads any range of records
without holding the corpus in memory. Image paths are resolved inside the image root (by default the corpus file's
folder; a path that leaves it is an error), as everywhere in mmembed (:func:`mmembed.textio.resolve_image`).
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, InputError
from ..inputs import check_unicode
from ..textio import decode_line, parse_json_object, resolve_image

#: what a corpus record looks like, for error messages
RECORD_SHAPE = '{"id": ..., "text": ...} (and/or "image": a path inside the image root)'
#: the manifests a corpus folder may hold, in the order they are looked for
FOLDER_MANIFESTS = ("metadata.jsonl", "metadata.parquet", "corpus.jsonl", "corpus.parquet")


@dataclass(frozen=True)
class Record:
    """One corpus record: its id, text and/or absolute image path, and ``where`` (``file:line``)."""

    id: str
    text: str | None
    image: str | None
    where: str

    def to_input(self) -> dict[str, str]:
        """The input ``Embedder.encode`` takes (a dict, so a text that looks like a file name stays text)."""
        return {k: v for k, v in (("text", self.text), ("image", self.image)) if v is not None}


def check_record(value: Any, where: str, root: Path | None) -> Record:
    """A record from a parsed line or row; anything else raises :class:`DataError` naming ``where``."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: a record must be a JSON object {RECORD_SHAPE}.")
    if "file_name" in value and "image" not in value:  # Hugging Face imagefolder metadata
        value = {"id": value["file_name"], **value, "image": value["file_name"]}
    rid = value.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
        got = "no 'id'" if rid is None else f"'id' {rid!r:.40}"
        raise DataError(f"{where}: the record has {got}; every record needs a non-empty string (or integer) id: "
                        f"{RECORD_SHAPE}.")
    text = value.get("text")
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: 'text' must be a non-empty string, got {text!r:.40}; drop the key for an "
                            f"image-only record.")
        try:
            check_unicode(text, where)
        except InputError as exc:
            raise DataError(str(exc)) from None
    image = resolve_image(value.get("image"), root, where)
    if text is None and image is None:
        raise DataError(f"{where}: the record has neither 'text' nor 'image' (its keys: {', '.join(map(str, value))});"
                        f" give {RECORD_SHAPE}.")
    return Record(str(rid), text, image, where)


class Corpus:
    """A checked corpus file: ``len()``, ``sha256`` (of its bytes), ``has_images`` and :meth:`records`."""

    def __init__(self, path: Path, image_root: Path, sha256: str, count: int, has_images: bool) -> None:
        self.path, self.image_root, self.sha256 = path, image_root, sha256
        self.count, self.has_images = count, has_images

    def __len__(self) -> int:
        return self.count

    @staticmethod
    def open(path: str | Path, image_root: str | Path | None = None) -> Corpus:
        """Read and check ``path`` (``.parquet``, else JSON lines; a folder: its manifest, :data:`FOLDER_MANIFESTS`);
        ``image_root`` defaults to the manifest's folder."""
        path = Path(path).expanduser()
        if path.is_dir():
            found = [path / name for name in FOLDER_MANIFESTS if (path / name).is_file()]
            if not found:
                raise DataError(f"corpus folder '{path}' holds none of {', '.join(FOLDER_MANIFESTS)}; give a "
                                f"JSON-lines (or .parquet) file of {RECORD_SHAPE}, or put one of those in the folder "
                                f"('metadata.jsonl' lines may name the image by 'file_name', as in Hugging Face's "
                                f"imagefolder).")
            path = found[0]
        if not path.is_file():
            raise DataError(f"corpus '{path}' does not exist.")
        root = Path(image_root).expanduser() if image_root is not None else path.parent
        if not root.is_dir():
            raise DataError(f"image root '{root}' is not a folder; give the folder the corpus's image paths are "
                            f"relative to.")
        corpus = ParquetCorpus(path, root) if path.suffix == ".parquet" else JsonlCorpus(path, root)
        if not len(corpus):
            raise DataError(f"corpus '{path}' holds no records; give a file with one {RECORD_SHAPE} a line.")
        return corpus

    def records(self, start: int, stop: int) -> list[Record]:
        """Records ``start`` to ``stop`` (in file order)."""
        raise NotImplementedError


class _Ids:
    """Duplicate-id check: each id with the line (or row) where it first appeared (an int: small for big corpora)."""

    def __init__(self, name: Any) -> None:
        self.name, self.seen = name, {}

    def add(self, record: Record, number: int) -> None:
        first = self.seen.setdefault(record.id, number)
        if first != number:
            raise DataError(f"{record.where}: id {record.id!r:.60} was already used at {self.name(first)}; ids must "
                            f"be unique (search results name records by id).")


class JsonlCorpus(Corpus):
    """A JSON-lines corpus: the byte offset of every record is kept (8 bytes a record), not the records."""

    def __init__(self, path: Path, root: Path) -> None:
        digest, ids, has_images = hashlib.sha256(), _Ids(lambda n: f"{path}:{n}"), False
        self.offsets, self.numbers = array("q"), array("q")
        offset = 0
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                digest.update(raw)
                if raw.strip():
                    record = self._parse(raw, number, path, root)
                    ids.add(record, number)
                    has_images |= record.image is not None
                    self.offsets.append(offset)
                    self.numbers.append(number)
                offset += len(raw)
        super().__init__(path, root, digest.hexdigest(), len(self.offsets), has_images)

    @staticmethod
    def _parse(raw: bytes, number: int, path: Path, root: Path) -> Record:
        where = f"{path}:{number}"
        line = decode_line(raw, where).rstrip("\r\n")
        line = line.removeprefix("\ufeff") if number == 1 else line
        return check_record(parse_json_object(line, where), where, root)

    def records(self, start: int, stop: int) -> list[Record]:
        stop = min(stop, len(self))
        out: list[Record] = []
        if start >= stop:
            return out
        with self.path.open("rb") as f:
            f.seek(self.offsets[start])
            number = self.numbers[start]
            for raw in f:
                if len(out) == stop - start:
                    break
                if raw.strip():
                    out.append(self._parse(raw, number, self.path, self.image_root))
                number += 1
        return out


class ParquetCorpus(Corpus):
    """A Parquet corpus (needs pyarrow): its ``id`` / ``text`` / ``image`` columns stay in an Arrow table."""

    def __init__(self, path: Path, root: Path) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or give the corpus as "
                            f"JSON lines.") from None
        try:
            schema = pq.read_schema(path)
            columns = [c for c in ("id", "text", "image") if c in schema.names]
            self.table = pq.read_table(path, columns=columns)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a readable Parquet file ({exc}).") from None
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        ids, has_images = _Ids(lambda n: f"{path}:row {n}"), False
        for start in range(0, self.table.num_rows, 4096):
            for i, record in enumerate(self._rows(path, root, start, start + 4096)):
                ids.add(record, start + i)
                has_images |= record.image is not None
        super().__init__(path, root, digest.hexdigest(), self.table.num_rows, has_images)

    def _rows(self, path: Path, root: Path, start: int, stop: int) -> list[Record]:
        rows = self.table.slice(start, max(0, stop - start)).to_pylist()
        return [check_record(row, f"{path}:row {start + i}", root) for i, row in enumerate(rows)]

    def records(self, start: int, stop: int) -> list[Record]:
        return self._rows(self.path, self.image_root, start, min(stop, len(self)))
