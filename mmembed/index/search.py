"""Searching an index folder (``mmembed index search``, :class:`Index`).

``Index.load(folder).search(queries, k)`` encodes the queries with the model the manifest names (its weights
fingerprint and settings checked: another model is refused), on the ``"query"`` side (the model's ``"query"`` prompt
when it has one, as :func:`mmembed.eval.encoding.encode_side`), and returns the ``k`` best ids and inner-product
scores (cosine similarity: the vectors are L2-normalised). With faiss installed the default is its exact flat index
(:mod:`mmembed.index.faiss_index`; ``ivf``, ``hnsw`` and ``pq`` are approximate); without it, or with
``method="blocked"``, the exact blocked top-k of :func:`mmembed.eval.search.topk_search`, which reads the shards
block by block (bounded memory). ``id_prefix`` keeps only records whose id starts with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..embedder import Embedder
from ..errors import ConfigError, DataError, RunStateError
from ..eval.encoding import encode_side
from ..eval.search import NpyFile, topk_search
from .builder import load_embedder
from .faiss_index import FAISS_METHODS, FaissOptions, cached_index, has_faiss, search_index
from .manifest import as_json, compat_key, ids_path, model_fingerprint, read_manifest, shard_done, vectors_path

#: search methods: "auto" is faiss's flat index when faiss is installed, else "blocked"
METHODS = ("auto", *FAISS_METHODS, "blocked")


class Index:
    """A finished index folder, ready to search: ``ids`` (in corpus order), ``manifest``, ``dimension``."""

    def __init__(self, folder: Path, manifest: dict[str, Any], ids: list[str], method: str, options: FaissOptions,
                 model: Embedder | None = None, device: str | None = None, block_size: int = 65536) -> None:
        self.folder, self.manifest, self.ids = folder, manifest, ids
        self.method, self.options, self.device, self.block_size = method, options, device, block_size
        self._embedder = self._checked(model) if model is not None else None
        self._faiss: Any = None

    @classmethod
    def load(cls, folder: str | Path, *, method: str = "auto", model: Embedder | None = None,
             device: str | None = None, nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
             ef_construction: int = 128, ef_search: int | None = None, pq_m: int | None = None,
             block_size: int = 65536) -> Index:
        """Open ``folder`` (every shard must be finished). ``method``: one of :data:`METHODS`; the faiss
        parameters are described in :mod:`mmembed.index.faiss_index`. ``model``: the embedder for the queries
        (default: loaded from the manifest when first needed, on ``device``)."""
        if method not in METHODS:
            raise ConfigError(f"method={method!r}: use one of {', '.join(METHODS)}.")
        if method == "auto":
            method = "flat" if has_faiss() else "blocked"
        folder = Path(folder).expanduser()
        manifest = read_manifest(folder)
        shards = manifest["shards"]
        missing = [s["name"] for s in shards if not shard_done(folder, s, manifest["dimension"], manifest["dtype"])]
        if missing:
            raise DataError(f"index '{folder}' is incomplete: {len(missing)} of {len(shards)} shards are missing "
                            f"({missing[0]} ...); rerun `mmembed index build` with the same options to finish it.")
        ids: list[str] = []
        for shard in shards:
            part = json.loads(ids_path(folder, shard).read_text(encoding="utf-8"))
            if len(part) != shard["stop"] - shard["start"]:
                raise DataError(f"{ids_path(folder, shard)}: {len(part)} ids for {shard['stop'] - shard['start']} "
                                f"vectors; rebuild the index into a new folder.")
            ids += part
        options = FaissOptions(nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
                               ef_search=ef_search, pq_m=pq_m)
        return cls(folder, manifest, ids, method, options, model, device, block_size)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def embedder(self) -> Embedder:
        """The query encoder: the manifest's model (loaded on first use), checked against the index."""
        if self._embedder is None:
            model = self.manifest["model"]
            self._embedder = self._checked(load_embedder(model["spec"], model.get("load") or {}, self.device))
        return self._embedder

    def _checked(self, embedder: Embedder) -> Embedder:
        model = self.manifest["model"]
        if as_json(embedder.get_config()) != model["config"] or model_fingerprint(embedder) != model["fingerprint"]:
            raise RunStateError(f"the model for the queries ({embedder.backbone.name_or_path}) is not the one index "
                                f"'{self.folder}' was built with ({model['spec'] or 'the default model'}, weights "
                                f"fingerprint {model['fingerprint'][:12]}): its queries would not match the vectors. "
                                f"Pass the model it was built with, or rebuild the index.")
        return embedder

    def encode_queries(self, queries: Sequence[Any], *, prompt_name: str | None = None, prompt: str | None = None,
                       batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 query vectors ``(n, dim)`` (the ``"query"`` side of the model)."""
        return encode_side(self.embedder, list(queries), "query", prompt_name=prompt_name, prompt=prompt,
                           batch_size=batch_size)

    def vectors(self) -> np.ndarray:
        """All vectors ``(n, dim)`` as float32, in corpus order (in memory)."""
        out = np.empty((len(self), self.dimension), dtype=np.float32)
        for shard in self.manifest["shards"]:
            out[shard["start"]:shard["stop"]] = np.load(vectors_path(self.folder, shard))
        return out

    def search(self, queries: Sequence[Any] | np.ndarray, k: int = 10, *, id_prefix: str | None = None,
               prompt_name: str | None = None, prompt: str | None = None,
               batch_size: int = 32) -> tuple[list[list[str | None]], np.ndarray]:
        """The ``k`` best records of each query: ``(ids, scores)``, n lists of ids and an ``(n, k)`` float32 array,
        best first. ``queries``: inputs (texts, image paths, ``{"text", "image"}``), or query vectors ``(n, dim)``.
        ``k`` is clipped to the number of candidates; an approximate index that finds fewer gives None ids and
        -inf scores."""
        if isinstance(queries, str):
            raise ConfigError("queries must be a list of queries (got one string): search([query], k).")
        vectors = np.asarray(queries, dtype=np.float32) if isinstance(queries, np.ndarray) else \
            self.encode_queries(queries, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ConfigError(f"query vectors of shape {vectors.shape}; this index needs (n, {self.dimension}).")
        allowed = None
        if id_prefix is not None:
            allowed = np.fromiter((i.startswith(id_prefix) for i in self.ids), dtype=bool, count=len(self))
        k = min(k, len(self) if allowed is None else int(allowed.sum()))
        if k < 1 or not len(vectors):
            return [[] for _ in range(len(vectors))], np.zeros((len(vectors), max(k, 0)), dtype=np.float32)
        if self.method == "blocked":
            scores, rows = self._blocked(vectors, k, allowed)
        else:
            if self._faiss is None:
                self._faiss = cached_index(self.folder, compat_key(self.manifest), self.vectors, self.method,
                                           self.options)
            scores, rows = search_index(self._faiss, self.method, vectors, k, self.options,
                                        None if allowed is None else np.flatnonzero(allowed))
        ids = [[self.ids[r] if r >= 0 else None for r in row] for row in rows.tolist()]
        return ids, scores

    def _blocked(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = topk_search(vectors, self._blocks(allowed), k, block_size=self.block_size, device=self.device)
        rows = rows.cpu().numpy()
        if allowed is not None:
            rows = np.flatnonzero(allowed)[rows]
        return scores.cpu().numpy().astype(np.float32), rows

    def _blocks(self, allowed: np.ndarray | None) -> Iterator[np.ndarray]:
        """The vectors, shard by shard and block by block (only the ``allowed`` rows when given)."""
        for shard in self.manifest["shards"]:
            vectors = NpyFile(vectors_path(self.folder, shard))
            for start in range(0, len(vectors), self.block_size):
                block = vectors[start:start + self.block_size]
                if allowed is not None:
                    first = shard["start"] + start
                    block = block[allowed[first:first + len(block)]]
                if len(block):
                    yield block
