"""MTEB: run an :class:`~mmembed.Embedder` on mteb (v2) tasks, from the registry or from local files.

>>> from mmembed.eval import mteb as mm_mteb
>>> scores = mm_mteb.evaluate(embedder, ["STSBenchmark", "data/my_beir_folder", "data/pairs.tsv"])
>>> scores["STSBenchmark"]["main_score"]

- :class:`MTEBEncoder` wraps an Embedder in mteb's encoder protocol (``encode`` of a DataLoader of batches,
  ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``). Prompts come from ``embedder.prompts`` by mteb's
  priority: ``"{task}-{query|document}"``, task name, ``"{TaskType}-{query|document}"``, task type,
  ``"query"`` / ``"document"``; none matching means no prompt.
- :func:`retrieval_task_from_beir` and :func:`sts_task_from_file` make offline tasks from files.
- :func:`evaluate` resolves task names and paths, runs ``mteb.evaluate`` and returns plain scores.

``mteb`` is imported inside the functions, so ``import mmembed`` stays light.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.formats import DataError, iter_jsonl, resolve_image
from ..errors import MMEmbedError

if TYPE_CHECKING:
    from mteb.abstasks.abstask import AbsTask
    from mteb.models.model_meta import ModelMeta

    from ..embedder import Embedder

logger = logging.getLogger(__name__)

__all__ = [  # noqa: F822 - MTEBEncoder is created on first access (module __getattr__), so mteb loads lazily
    "MTEBEncoder",
    "TaskDataUnavailableError",
    "TaskFileError",
    "UnknownTaskError",
    "evaluate",
    "local_task",
    "retrieval_task_from_beir",
    "sts_task_from_file",
]


class UnknownTaskError(MMEmbedError, LookupError):
    """A task name is not in mteb's registry (and is not an existing path)."""


class TaskDataUnavailableError(MMEmbedError, RuntimeError):
    """The data of a registry task could not be loaded (typically: not in the local cache, and offline)."""


class TaskFileError(DataError):
    """A local task file is malformed; the message names ``file:line``."""


# ================================================================================================ the encoder
def _new_encoder_class():
    """``MTEBEncoder`` subclasses mteb's ``AbsEncoder``; the class is built on first use so mteb loads lazily."""
    from mteb.models.abs_encoder import AbsEncoder

    class _MTEBEncoder(_EncoderMixin, AbsEncoder):
        pass

    _MTEBEncoder.__name__ = _MTEBEncoder.__qualname__ = "MTEBEncoder"
    _MTEBEncoder.__module__ = __name__
    _MTEBEncoder.__doc__ = _EncoderMixin.__doc__
    return _MTEBEncoder


class _EncoderMixin:
    """An :class:`~mmembed.Embedder` in mteb's v2 encoder protocol.

    Args:
        embedder: the model.
        name: the model name in mteb's results (``"org/name"``; a name without ``/`` gets ``"local/"`` in front).
            Default: the model's hub id, or ``"local/<folder name>"`` for a local path.
        revision: the revision in mteb's results. Default: a hash of the embedder's configuration, its model config
            and a weight fingerprint (so two different local models never share cached results).
        batch_size: used when mteb passes no ``batch_size`` in its encode kwargs.

    ``encode`` takes mteb's batches: texts (``batch["text"]``), images (``batch["image"]``, PIL images) or both (paired
    into ``{"text", "image"}`` inputs). An empty text with no image gets a zero vector (cosine 0 to everything).
    """

    def __init__(self, embedder: Embedder, *, name: str | None = None, revision: str | None = None,
                 batch_size: int = 32) -> None:
        self.model = embedder
        self.embedder = embedder
        self.name = name
        self.revision = revision
        self.batch_size = batch_size
        self.chunk_size = 8192  # inputs per embedder.encode call (it sorts each call's inputs by length)
        self.image_chunk_size = 1024  # ... or fewer, once this many of them hold an image
        self._meta: tuple[Any, ModelMeta] | None = None

    # -------------------------------------------------------------------------------------------- prompts
    @property
    def model_prompts(self) -> dict[str, str]:  # read by AbsEncoder.get_prompt_name
        return dict(self.embedder.prompts)

    def prompt_for(self, task_metadata: Any, prompt_type: Any = None) -> tuple[str | None, str]:
        """``(prompt name, prompt text)`` for a task and a prompt type (``query`` / ``document`` / None), by mteb's
        priority; ``(None, "")`` when no key of ``embedder.prompts`` matches."""
        from mteb.models.abs_encoder import get_prompt_name

        prompts = self.embedder.prompts
        if prompt_type is not None and not hasattr(prompt_type, "value"):
            from mteb.types import PromptType

            prompt_type = PromptType(prompt_type)
        name = get_prompt_name(prompts, task_metadata, prompt_type) if prompts else None
        return (name, prompts[name]) if name is not None else (None, "")

    def unused_prompt_keys(self, task_names: Any = ()) -> list[str]:
        """Keys of ``embedder.prompts`` that mteb never selects: not a registry task, a task type, a prompt type or
        one of ``task_names`` (local tasks), alone or followed by ``-query`` / ``-document``."""
        from mteb.models.abs_encoder import AbsEncoder

        if not self.embedder.prompts:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            level = logging.getLogger("mteb").level
            logging.getLogger("mteb").setLevel(logging.ERROR)
            try:
                valid, _ = AbsEncoder.validate_task_to_prompt_name(dict(self.embedder.prompts),
                                                                   raise_for_invalid_keys=False)
            finally:
                logging.getLogger("mteb").setLevel(level)
        local = set(task_names)
        return sorted(key for key in set(self.embedder.prompts) - set(valid or {})
                      if key not in local and key.rsplit("-", 1)[0] not in local)

    # -------------------------------------------------------------------------------------------- encode
    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None,
               **kwargs: Any) -> np.ndarray:
        prompt_name, prompt = self.prompt_for(task_metadata, prompt_type)
        logger.debug("%s/%s/%s %s: prompt %r", task_metadata.name, hf_subset, hf_split,
                     getattr(prompt_type, "value", prompt_type), prompt_name)
        batch_size = int(kwargs.get("batch_size") or self.batch_size)
        chunks: list[np.ndarray] = []
        pending: list[Any] = []
        images = 0
        for batch in inputs:  # encoded in chunks, so a large image corpus is never all decoded at once
            items = _batch_items(batch, task_metadata.name)
            pending += items
            images += sum(1 for item in items if item is not None and not (isinstance(item, dict) and
                                                                            "image" not in item))
            if len(pending) >= self.chunk_size or images >= self.image_chunk_size:
                chunks.append(self._encode_items(pending, prompt, batch_size, kwargs.get("show_progress_bar"),
                                                 task_metadata.name))
                pending, images = [], 0
        if pending or not chunks:
            chunks.append(self._encode_items(pending, prompt, batch_size, kwargs.get("show_progress_bar"),
                                             task_metadata.name))
        return np.concatenate(chunks)

    def _encode_items(self, items: list[Any], prompt: str, batch_size: int, show_progress_bar: bool | None,
                      task_name: str) -> np.ndarray:
        out = np.zeros((len(items), self.embedder.embedding_dim), dtype=np.float32)
        keep = [i for i, item in enumerate(items) if item is not None]
        if len(keep) < len(items):
            logger.warning("%s: %d empty input(s) (no text, no image) get a zero vector.", task_name,
                           len(items) - len(keep))
        if keep:
            vectors = self.embedder.encode([items[i] for i in keep], prompt=prompt, batch_size=batch_size,
                                           show_progress_bar=show_progress_bar, convert_to_numpy=True)
            if isinstance(vectors, list):  # a special-token pooler: one row per token occurrence
                if any(v.shape[0] != 1 for v in vectors):
                    raise MMEmbedError("this model gives several vectors for some inputs (special-token pooling "
                                       "with repeated tokens); mteb needs one vector per input.")
                vectors = np.concatenate(vectors)
            out[keep] = np.asarray(vectors, dtype=np.float32)
        return out

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    # -------------------------------------------------------------------------------------------- metadata
    @property
    def mteb_model_meta(self) -> ModelMeta:
        """mteb's ``ModelMeta`` of the embedder (rebuilt when its prompts or options change)."""
        embedder = self.embedder
        key = (json.dumps(embedder.prompts, sort_keys=True), embedder.truncate_dim, self.name, self.revision,
               embedder.embedding_dim)
        if self._meta is None or self._meta[0] != key:
            self._meta = (key, build_model_meta(embedder, name=self.name, revision=self.revision))
        return self._meta[1]


def _batch_items(batch: dict, task_name: str) -> list[Any]:
    """mteb batch -> mmembed inputs (texts wrapped as ``{"text": ...}`` so a text is never read as an image path)."""
    for key in ("audio", "video"):
        if batch.get(key) is not None:
            raise MMEmbedError(f"mteb task '{task_name}' gives {key} inputs; mmembed embeds text and images only.")
    texts = batch.get("text")
    images = batch.get("image")
    if texts is None and images is None:
        raise MMEmbedError(f"mteb task '{task_name}' gave a batch with neither 'text' nor 'image' (keys: "
                           f"{sorted(batch)}).")
    n = len(texts) if texts is not None else len(images)
    items: list[Any] = []
    for i in range(n):
        text = texts[i] if texts is not None else None
        image = _as_pil(images[i]) if images is not None else None
        if text is not None and not isinstance(text, str):
            text = str(text)
        if text is not None and not text.strip():
            text = None
        if text is not None and image is not None:
            items.append({"text": text, "image": image})
        elif image is not None:
            items.append(image)
        elif text is not None:
            items.append({"text": text})
        else:
            items.append(None)
    return items


def _as_pil(image: Any) -> Any:
    if image is None:
        return None
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and (image.get("bytes") or image.get("path")):  # an undecoded datasets Image
        import io

        return Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):  # CHW
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def model_name(embedder: Embedder, name: str | None = None) -> str:
    """The ``"org/name"`` mteb gives to results: ``name``, the hub id, or ``"local/<folder or file name>"``."""
    if name:
        return name if "/" in name else f"local/{name}"
    source = str(embedder.backbone.name_or_path or "model")
    path = Path(source).expanduser()
    if path.exists():
        return f"local/{path.resolve().name or 'model'}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source):  # a hub id
        return source
    cleaned = re.sub(r"[^\w.-]+", "_", source).strip("_")
    return f"local/{cleaned or 'model'}"


def model_revision(embedder: Embedder) -> str:
    """A 12-hex-digit hash of the chain config, the model config and the weights fingerprint
    (:func:`~mmembed.eval.report.weights_fingerprint`: every parameter counts, a LoRA adapter's included)."""
    from .report import weights_fingerprint

    digest = hashlib.sha256(json.dumps(embedder.get_config(), sort_keys=True, default=str).encode())
    config = embedder.backbone.config
    digest.update(config.to_json_string(use_diff=False).encode() if hasattr(config, "to_json_string")
                  else repr(config).encode())
    digest.update(weights_fingerprint(embedder.backbone.model).encode())
    return digest.hexdigest()[:12]


def build_model_meta(embedder: Embedder, *, name: str | None = None, revision: str | None = None) -> ModelMeta:
    """mteb's ``ModelMeta`` for an embedder: name, revision, embed_dim, n_parameters, max_tokens, modalities,
    cosine similarity, PyTorch, ``use_instructions`` = whether it has prompts."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    return ModelMeta.create_empty(overwrites={
        "name": model_name(embedder, name),
        "revision": revision or model_revision(embedder),
        "embed_dim": embedder.embedding_dim,
        "n_parameters": sum(p.numel() for p in embedder.parameters()),
        "max_tokens": embedder.backbone.max_length,
        "modalities": ["text", "image"] if embedder.backbone.supports_images else ["text"],
        "similarity_fn_name": ScoringFunction.COSINE,  # the enum: create_empty skips pydantic's conversion
        "framework": ["PyTorch"],
        "use_instructions": bool(embedder.prompts),
        "open_weights": True,
    })


def __getattr__(attr: str) -> Any:  # MTEBEncoder is created on first access (it subclasses mteb's AbsEncoder)
    if attr == "MTEBEncoder":
        cls = _new_encoder_class()
        globals()["MTEBEncoder"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def as_encoder(model: Any, **kwargs: Any) -> Any:
    """An :class:`MTEBEncoder` for ``model`` (returned as is when it already is one)."""
    cls = globals().get("MTEBEncoder") or __getattr__("MTEBEncoder")
    return model if isinstance(model, cls) else cls(model, **kwargs)


# ================================================================================================ local tasks
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


def _read_side(path: Path, folder: Path, kind: str) -> tuple[list[str], dict[str, list], list[str]]:
    """``corpus.jsonl`` / ``queries.jsonl`` -> ids, columns (text, title, image paths) and the modalities present."""
    ids: list[str] = []
    texts: list[str | None] = []
    titles: list[str] = []
    images: list[str | None] = []
    seen: set[str] = set()
    for where, row in iter_jsonl(path):
        if "_id" not in row:
            fields = '"_id", "title", "text"' if kind == "corpus" else '"_id", "text"'
            raise TaskFileError(f"{where}: missing '_id' (a BEIR {kind} line is {{{fields}}}, optionally with "
                                f"\"image\").")
        doc_id = str(row["_id"])
        if doc_id in seen:
            raise TaskFileError(f"{where}: duplicate _id {doc_id!r}.")
        seen.add(doc_id)
        text, image = row.get("text"), row.get("image")
        title = (row.get("title") or "") if kind == "corpus" else ""  # queries have no title
        for field, value in (("text", text), ("title", title), ("image", image)):
            if value is not None and not isinstance(value, str):
                raise TaskFileError(f"{where}: '{field}' must be a string, got {type(value).__name__}.")
        if image is not None:
            image = resolve_image(str(image), folder, where)  # inside the task folder
        if not (text or "").strip() and not title.strip() and image is None:
            raise TaskFileError(f"{where}: {kind} entry {doc_id!r} has no text and no image.")
        ids.append(doc_id)
        texts.append(text)
        titles.append(title)
        images.append(image)
    if not ids:
        raise TaskFileError(f"{path}: no {kind} entries.")
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
    return ids, columns, modalities


def _read_qrels(path: Path) -> list[tuple[int, str, str, int]]:
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if number == 1 and [f.strip().lower() for f in fields[:2]] == ["query-id", "corpus-id"]:
                continue  # the header
            if len(fields) != 3:
                raise TaskFileError(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                                    f"got {len(fields)}.")
            try:
                score = int(float(fields[2]))
            except ValueError:
                raise TaskFileError(f"{path}:{number}: score {fields[2]!r} is not a number.") from None
            rows.append((number, fields[0].strip(), fields[1].strip(), score))
    return rows


def _side_code(modalities: list[str]) -> str:
    """mteb's category letters of one side: ``t``, ``i`` or ``it``."""
    return "it" if len(modalities) == 2 else ("i" if modalities == ["image"] else "t")


def retrieval_task_from_beir(folder: str | Path, name: str | None = None, split: str = "test") -> AbsTask:
    """An mteb retrieval task from a folder in the BEIR layout.

    ``corpus.jsonl`` lines ``{"_id", "title", "text"}``, ``queries.jsonl`` lines ``{"_id", "text"}``,
    ``qrels/<split>.tsv`` with the header ``query-id<TAB>corpus-id<TAB>score``. Corpus and query lines may also
    carry ``"image"``: an image path (relative to the folder), for text-image retrieval (the task becomes an
    ``Any2AnyRetrieval`` with category ``t2i``, ``i2t``, ``it2i``...). Main score: nDCG@10. The task's name is
    ``name`` or the folder's name. Malformed lines raise :class:`TaskFileError` naming ``file:line``.
    """
    from datasets import Dataset, Features, Image, Value
    from mteb import TaskMetadata
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    folder = Path(folder).expanduser()
    corpus_path, queries_path, qrels_path = folder / "corpus.jsonl", folder / "queries.jsonl", \
        folder / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path, qrels_path):
        if not path.is_file():
            raise TaskFileError(f"{folder} is not a BEIR folder: {path.relative_to(folder)} is missing (expected "
                                f"corpus.jsonl, queries.jsonl and qrels/{split}.tsv).")
    doc_ids, doc_columns, doc_modalities = _read_side(corpus_path, folder, "corpus")
    query_ids, query_columns, query_modalities = _read_side(queries_path, folder, "query")
    known_docs, known_queries = set(doc_ids), set(query_ids)
    relevant: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    for number, qid, did, score in _read_qrels(qrels_path):
        if qid not in known_queries or did not in known_docs:
            missing.append(f"{qrels_path}:{number}")
            continue
        relevant.setdefault(qid, {})[did] = score
    if missing:
        logger.warning("%s: %d qrels line(s) name a query or document that is not in the files (first: %s); they "
                       "are ignored.", qrels_path, len(missing), missing[0])
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


# ================================================================================================ evaluate
def _looks_like_path(entry: str) -> bool:
    return "/" in entry or os.sep in entry or entry.startswith(("~", ".")) or \
        Path(entry).suffix.lower() in (".jsonl", ".json", ".tsv", ".txt", ".csv")


def _registry_names() -> list[str]:
    import importlib

    module = importlib.import_module("mteb.get_tasks")
    registry = getattr(module, "_TASKS_REGISTRY", None)
    if registry is not None:
        return list(registry)
    import mteb

    return [t.metadata.name for t in mteb.get_tasks(exclude_superseded=False)]


def close_task_names(name: str, n: int = 5) -> list[str]:
    """Registry task names close to ``name`` (case-insensitive), best first."""
    names = _registry_names()
    by_lower: dict[str, str] = {}
    for candidate in names:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    extra = [c for c in names if name.lower() in c.lower() and c.lower() not in matches] if len(name) >= 3 else []
    return list(dict.fromkeys([by_lower[m] for m in matches] + sorted(extra, key=len)))[:n]


def _is_network_error(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        module = type(exc).__module__ or ""
        if isinstance(exc, (OSError, TimeoutError)) or module.split(".")[0] in (
                "requests", "urllib3", "httpx", "httpcore", "huggingface_hub", "aiohttp", "fsspec") or \
                type(exc).__name__ in ("DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _guard_data_loading(task: AbsTask) -> AbsTask:
    """Make ``task.load_data`` raise :class:`TaskDataUnavailableError` naming the task instead of a hub error."""
    original = task.load_data

    def load_data(*args: Any, **kwargs: Any) -> None:
        try:
            original(*args, **kwargs)
        except MMEmbedError:
            raise
        except Exception as exc:
            name, dataset = task.metadata.name, task.metadata.dataset or {}
            source = f"Hugging Face dataset '{dataset.get('path')}' (revision {dataset.get('revision')})"
            if _is_network_error(exc):
                offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
                    os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on")
                raise TaskDataUnavailableError(
                    f"mteb task '{name}': its data ({source}) is not available offline: it is not in the local "
                    f"Hugging Face cache{' and HF_HUB_OFFLINE is set' if offline else ' and the hub cannot be reached'}"
                    f". Run once with network access to cache it, or evaluate a local task (a BEIR folder or an STS "
                    f"file). Cause: {type(exc).__name__}: {exc}") from exc
            raise TaskDataUnavailableError(f"mteb task '{name}': loading its data ({source}) failed: "
                                           f"{type(exc).__name__}: {exc}") from exc

    task.load_data = load_data  # type: ignore[method-assign]
    return task


def resolve_tasks(tasks: Any) -> list[AbsTask]:
    """Task objects from names (mteb's registry), paths (local tasks) and ``AbsTask`` instances."""
    import mteb
    from mteb.abstasks.abstask import AbsTask

    if isinstance(tasks, (str, os.PathLike, AbsTask)):
        tasks = [tasks]
    resolved: list[AbsTask] = []
    for entry in tasks:
        if isinstance(entry, AbsTask):
            resolved.append(entry)
            continue
        if not isinstance(entry, (str, os.PathLike)):
            raise TypeError(f"a task is a name, a path or an mteb AbsTask, got {type(entry).__name__}.")
        text = os.fspath(entry)
        if Path(text).expanduser().exists():
            resolved.append(local_task(text))
            continue
        if isinstance(entry, os.PathLike) or (_looks_like_path(text) and text not in _registry_names()):
            raise TaskFileError(f"{text}: no such file or folder (a local task is a BEIR folder or an STS file).")
        try:
            found = list(mteb.get_tasks(tasks=[text]))
        except KeyError:
            try:  # a benchmark name, e.g. "MTEB(eng, v2)": its tasks (copied: the benchmark object is shared)
                found = [copy.copy(task) for task in mteb.get_benchmark(text).tasks]
            except KeyError:
                close = close_task_names(text)
                hint = f" Close matches: {', '.join(close)}." if close else " No similar task names."
                raise UnknownTaskError(f"unknown mteb task '{text}' (not a task or benchmark of mteb's registry, "
                                       f"not an existing path).{hint}") from None
        resolved.extend(_guard_data_loading(task) for task in found)
    names = [t.metadata.name for t in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several tasks are named {duplicates}; give local tasks distinct names.")
    return resolved


def evaluate(embedder: Any, tasks: Any, *, output_folder: str | Path | None = None, batch_size: int = 32,
             overwrite: bool = True, name: str | None = None, show_progress_bar: bool = False) -> dict[str, dict]:
    """Run mteb tasks on an embedder.

    Args:
        embedder: an :class:`~mmembed.Embedder` (or an :class:`MTEBEncoder`).
        tasks: mteb task or benchmark names (``"STSBenchmark"``, ``"MTEB(eng, v2)"``), paths of local tasks (a BEIR folder with ``corpus.jsonl`` ->
            retrieval, a file -> STS) or mteb ``AbsTask`` objects.
        output_folder: where mteb writes its result files (``<output_folder>/results/<model>/<revision>/<task>.json``);
            None writes nothing.
        batch_size: the encode batch size (mteb's ``encode_kwargs``).
        overwrite: rerun tasks whose results are already in ``output_folder`` (False: reuse them).
        name: the model name in the results (default: from the model's path).

    Returns:
        ``{task_name: {"main_score": float, "metric": str, "scores": {split: {metric: value, ...}}}}``; the scores
        are those of the task's first subset, ``main_score`` is mteb's (averaged over splits and subsets).

    Raises:
        UnknownTaskError: a name is neither a registry task nor an existing path (the message lists close names).
        TaskDataUnavailableError: a registry task's data cannot be loaded (e.g. offline and not cached).
        TaskFileError: a local task file is malformed.
    """
    import datasets
    import mteb

    resolved = resolve_tasks(tasks)
    encoder = as_encoder(embedder, name=name, batch_size=batch_size)
    unused = encoder.unused_prompt_keys(t.metadata.name for t in resolved)
    if unused:
        logger.info("prompts %s name no mteb task, task type or query/document: mteb never uses them.", unused)
    cache = mteb.ResultCache(str(Path(output_folder).expanduser())) if output_folder is not None else None
    bars = datasets.is_progress_bar_enabled()
    if not show_progress_bar:
        datasets.disable_progress_bars()  # mteb's dataset.map calls
    try:
        result = mteb.evaluate(encoder, resolved, cache=cache,
                               overwrite_strategy="always" if overwrite else "only-missing",
                               encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
                               show_progress_bar=show_progress_bar)
    finally:
        if bars:
            datasets.enable_progress_bars()
    metrics = {t.metadata.name: t.metadata.main_score for t in resolved}
    out: dict[str, dict] = {}
    for task_result in result.task_results:
        scores = {split: _plain(subsets[0]) for split, subsets in task_result.scores.items() if subsets}
        out[task_result.task_name] = {"main_score": float(task_result.get_score()),
                                      "metric": metrics.get(task_result.task_name, "main_score"), "scores": scores}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def mteb_report(embedder: Any, tasks: Any, *, output_folder: str | Path | None = None, batch_size: int = 32,
                name: str | None = None, show_progress_bar: bool = False):
    """:func:`evaluate` as a :class:`~mmembed.eval.report.Report` (main scores x 100; NaN scores become None);
    mteb's own result files go to ``output_folder``."""
    from .report import Report, describe_model, file_hashes

    tasks = [tasks] if isinstance(tasks, (str, Path)) else list(tasks)
    results = evaluate(embedder, tasks, output_folder=output_folder, batch_size=batch_size, name=name,
                       show_progress_bar=show_progress_bar)
    local = [Path(t) for t in tasks if isinstance(t, (str, Path)) and _looks_like_path(str(t)) and Path(t).exists()]
    files = [p for t in local for p in ([t] if t.is_file() else sorted(t.rglob("*")) if t.is_dir() else [])
             if p.is_file()]
    entries = {task: {"score": _finite(100 * r["main_score"]), "metric": r["metric"], "splits": _finite(r["scores"])}
               for task, r in results.items()}
    scores = [e["score"] for e in entries.values() if e["score"] is not None]
    encoder = as_encoder(embedder, name=name, batch_size=batch_size)
    return Report(
        suite="mteb", metric="mteb main score x 100", tasks=entries,
        summary={"avg": float(np.mean(scores)) if len(scores) == len(entries) and scores else None},
        model={**describe_model(embedder), "mteb_name": encoder.mteb_model_meta.name,
               "mteb_revision": encoder.mteb_model_meta.revision},
        protocol={"runner": "mteb.evaluate", "prompts": "embedder.prompts by mteb's priority rules",
                  "mteb_results": str(output_folder) if output_folder is not None else None},
        data={"tasks": [str(t) for t in tasks], "files": file_hashes(files)},
    )


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
