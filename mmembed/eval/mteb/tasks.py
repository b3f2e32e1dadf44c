"""Local tasks: a BEIR-layout folder becomes an mteb retrieval task (text or text-image), a JSONL / TSV file of
sentence pairs with scores an mteb STS task; both live in memory, so they run offline."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...textio import iter_jsonl
from ..beir import BeirEntry, read_beir_folder
from .errors import TaskFileError

if TYPE_CHECKING:
    from mteb.abstasks.abstask import AbsTask

logger = logging.getLogger(__name__)

_COMMON_METADATA: dict[str, Any] = {
    "reference": None, "eval_langs": ["eng-Latn"], "date": None, "domains": [], "task_subtypes": [],
    "license": "not specified", "annotations_creators": "derived", "dialect": [], "sample_creation": "found",
    "bibtex_citation": "",
}


def _task_name(source: Path, name: str | None) -> str:
    if name:
        return name
    stem = source.name if source.is_dir() else source.name.split(".")[0]
    return re.sub(r"\W+", "_", stem).strip("_") or "LocalTask"


def _files_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _columns(entries: dict[str, BeirEntry], kind: str) -> tuple[list[str], dict[str, list], list[str]]:
    """The ids, columns (text, title, image paths) and modalities present of one side of a BEIR folder."""
    values = list(entries.values())
    texts, titles, images = [e.text for e in values], [e.title for e in values], [e.image for e in values]
    modalities = []
    if any((t or "").strip() for t in texts) or any(titles):
        modalities.append("text")
    if any(i is not None for i in images):
        modalities.append("image")
    columns: dict[str, list] = {}
    if "text" in modalities:
        columns["text"] = [t or "" for t in texts]
        if kind == "corpus" and any(titles):
            columns["title"] = titles
    if "image" in modalities:
        columns["image"] = images
    return list(entries), columns, modalities


def _side_code(modalities: list[str]) -> str:
    """mteb's category letters of one side: ``t``, ``i`` or ``it``."""
    return "it" if len(modalities) == 2 else ("i" if modalities == ["image"] else "t")


def retrieval_task_from_beir(folder: str | Path, name: str | None = None, split: str = "test") -> AbsTask:
    """An mteb retrieval task from a folder in the BEIR layout.

    ``corpus.jsonl`` lines ``{"_id", "title", "text"}``, ``queries.jsonl`` lines ``{"_id", "text"}``,
    ``qrels/<split>.tsv`` with the header ``query-id<TAB>corpus-id<TAB>score``. Corpus and query lines may also
    carry ``"image"``: an image path (relative to the folder), for text-image retrieval (the task becomes an
    ``Any2AnyRetrieval`` with category ``t2i``, ``i2t``, ``it2i``...). Main score: nDCG@10. The task's name is
    ``name`` or the folder's name. Malformed lines raise :class:`TaskFileError` naming ``file:line``
    (:func:`mmembed.eval.beir.read_beir_folder`, the reader :func:`mmembed.eval.retrieval.read_beir` uses too);
    qrels lines naming an unknown query or document are left out, with a warning.
    """
    from datasets import Dataset, Features, Image, Value
    from mteb import TaskMetadata
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    folder = Path(folder).expanduser()
    data = read_beir_folder(folder, split, images=True, unknown_ids="skip", error=TaskFileError)
    corpus_path, queries_path, qrels_path = data.files
    doc_ids, doc_columns, doc_modalities = _columns(data.corpus, "corpus")
    query_ids, query_columns, query_modalities = _columns(data.queries, "query")
    relevant = data.qrels
    if data.skipped:
        logger.warning("%s: %d qrels line(s) name a query or document that is not in the files (first: %s); they "
                       "are ignored.", qrels_path, len(data.skipped), data.skipped[0])
    if not any(score > 0 for docs in relevant.values() for score in docs.values()):
        raise TaskFileError(f"{qrels_path}: no relevant (score > 0) pair between the queries and the corpus.")
    keep = [i for i, qid in enumerate(query_ids) if qid in relevant]
    query_ids = [query_ids[i] for i in keep]
    query_columns = {k: [v[i] for i in keep] for k, v in query_columns.items()}

    category = f"{_side_code(query_modalities)}2{_side_code(doc_modalities)}"
    text_only = category == "t2t"
    metadata = TaskMetadata(
        name=_task_name(folder, name), description=f"Local BEIR retrieval task read from {folder}.",
        dataset={"path": str(folder.resolve()), "revision": _files_hash(corpus_path, queries_path, qrels_path)},
        type="Retrieval" if text_only else "Any2AnyRetrieval", category=category,
        modalities=sorted(set(doc_modalities) | set(query_modalities)), main_score="ndcg_at_10",
        eval_splits=[split], **_COMMON_METADATA,
    )

    def dataset(ids: list[str], columns: dict[str, list]) -> Any:
        features = {"id": Value("string")}
        features.update({k: Image() if k == "image" else Value("string") for k in columns})
        return Dataset.from_dict({"id": ids, **columns}, features=Features(features))

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = {"default": {split: RetrievalSplitData(
            queries=dataset(query_ids, query_columns), corpus=dataset(doc_ids, doc_columns),
            relevant_docs={q: dict(d) for q, d in relevant.items()}, top_ranked=None)}}
        self.data_loaded = True

    cls = type("LocalRetrievalTask", (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data,
                                                            "__module__": __name__})
    return cls()


_STS_COLUMNS = ("sentence1", "sentence2", "score")


def _read_sts(path: Path) -> tuple[list[str], list[str], list[float]]:
    first, second, scores = [], [], []

    def add(where: str, row: dict) -> None:
        missing = [c for c in _STS_COLUMNS if row.get(c) is None]
        if missing:
            raise TaskFileError(f"{where}: missing {', '.join(missing)} (an STS row is sentence1, sentence2, score).")
        for column in _STS_COLUMNS[:2]:
            if not isinstance(row[column], str) or not row[column].strip():
                raise TaskFileError(f"{where}: {column} must be a non-empty string.")
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            raise TaskFileError(f"{where}: score {row['score']!r} is not a number.") from None
        if not np.isfinite(score):
            raise TaskFileError(f"{where}: score {row['score']!r} is not finite.")
        first.append(row["sentence1"])
        second.append(row["sentence2"])
        scores.append(score)

    head = path.read_text(encoding="utf-8").lstrip()[:1]
    if path.suffix.lower() in (".jsonl", ".json") or head == "{":
        for where, row in iter_jsonl(path):
            add(where, row)
    else:
        with path.open(encoding="utf-8", newline="") as handle:
            lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, start=1) if line.strip()]
        if not lines:
            raise TaskFileError(f"{path}: the file is empty.")
        header_number, header_line = lines[0]
        header = [h.strip().lower() for h in header_line.split("\t")]
        if not set(_STS_COLUMNS) <= set(header):
            raise TaskFileError(f"{path}:{header_number}: the header must name the tab-separated columns "
                                f"sentence1, sentence2 and score (got {header_line!r}).")
        index = {c: header.index(c) for c in _STS_COLUMNS}
        for number, line in lines[1:]:
            fields = line.split("\t")
            if len(fields) != len(header):
                raise TaskFileError(f"{path}:{number}: {len(fields)} tab-separated fields, the header has "
                                    f"{len(header)}.")
            add(f"{path}:{number}", {c: fields[i] for c, i in index.items()})
    if len(scores) < 2:
        raise TaskFileError(f"{path}: an STS task needs at least 2 pairs, found {len(scores)}.")
    if min(scores) == max(scores):
        raise TaskFileError(f"{path}: every pair has the score {scores[0]}; a correlation needs varying scores.")
    return first, second, scores


def sts_task_from_file(path: str | Path, name: str | None = None) -> AbsTask:
    """An mteb STS task from a JSONL file of ``{"sentence1", "sentence2", "score"}`` lines or a tab-separated file
    whose header names ``sentence1``, ``sentence2`` and ``score`` (other columns are ignored). The score range is the
    data's min and max; main score: cosine Spearman. The task's name is ``name`` or the file name without suffix."""
    from datasets import Dataset, DatasetDict
    from mteb import TaskMetadata
    from mteb.abstasks.sts import AbsTaskSTS

    path = Path(path).expanduser()
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file (an STS task file is JSONL or TSV with sentence1, sentence2, "
                            f"score).")
    first, second, scores = _read_sts(path)
    metadata = TaskMetadata(
        name=_task_name(path, name), description=f"Local STS task read from {path}.",
        dataset={"path": str(path.resolve()), "revision": _files_hash(path)}, type="STS", category="t2t",
        modalities=["text"], main_score="cosine_spearman", eval_splits=["test"], **_COMMON_METADATA,
    )

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = DatasetDict({"test": Dataset.from_dict({"sentence1": first, "sentence2": second,
                                                               "score": scores})})
        self.data_loaded = True

    cls = type("LocalSTSTask", (AbsTaskSTS,), {"metadata": metadata, "load_data": load_data, "min_score": min(scores),
                                               "max_score": max(scores), "__module__": __name__})
    return cls()


def local_task(path: str | Path, name: str | None = None) -> AbsTask:
    """A folder with ``corpus.jsonl`` -> :func:`retrieval_task_from_beir`; a file -> :func:`sts_task_from_file`."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "corpus.jsonl").is_file():
            raise TaskFileError(f"{path} is a folder without corpus.jsonl: a local retrieval task is a BEIR folder "
                                f"(corpus.jsonl, queries.jsonl, qrels/test.tsv); an STS task is a single file.")
        return retrieval_task_from_beir(path, name=name)
    return sts_task_from_file(path, name=name)
