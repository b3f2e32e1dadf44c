"""faiss indexes over an index folder's vectors (``pip install 'mmembed[index]'``): inner product, so cosine
similarity of mmembed's L2-normalised vectors.

``flat`` is exact (``IndexFlatIP``); ``ivf`` (``IndexIVFFlat``: ``nlist`` k-means cells, ``nprobe`` of them
searched), ``hnsw`` (``IndexHNSWFlat``: ``hnsw_m`` links a node, ``ef_search`` candidates kept while searching) and
``pq`` (``IndexIVFPQ``: IVF cells holding vectors compressed to ``pq_m`` bytes) are approximate. Their defaults
suit most sizes: ``nlist`` about 4 sqrt(n) (at most n / 39, faiss's training rule), ``nprobe`` max(8, nlist / 16),
``ef_search`` max(64, 2k), ``pq_m`` d / 4 (or the nearest divisor of d below). A trained index is saved in the
folder (``faiss-<method>-<hash>.index``, atomically) and reused while the index and the options are the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..files import atomic_path

logger = logging.getLogger(__name__)

#: the faiss index kinds
FAISS_METHODS = ("flat", "ivf", "hnsw", "pq")
INSTALL_HINT = "pip install 'mmembed[index]' (faiss-cpu)"


@dataclass
class FaissOptions:
    """Parameters of the approximate indexes (None: the default for the index size; see the module's docstring)."""

    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 128
    ef_search: int | None = None
    pq_m: int | None = None


def has_faiss() -> bool:
    """Whether faiss can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"faiss is not installed: {INSTALL_HINT}, or search without it (--faiss none / "
                          f"method='blocked': exact, slower).") from None
    return faiss


def _nlist(n: int, options: FaissOptions) -> int:
    return options.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))


def _pq_m(d: int, options: FaissOptions) -> int:
    if options.pq_m is not None:
        if d % options.pq_m:
            raise ConfigError(f"pq_m={options.pq_m}: the dimension {d} must be a multiple of it.")
        return options.pq_m
    return next(m for m in range(max(1, d // 4), 0, -1) if d % m == 0)


def make_index(vectors: np.ndarray, method: str, options: FaissOptions) -> Any:
    """A faiss index of ``method`` over ``vectors`` (float32, ``(n, d)``), trained when it needs training."""
    faiss = import_faiss()
    n, d = vectors.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if method == "flat":
        index = faiss.IndexFlatIP(d)
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(d, options.hnsw_m, ip)
        index.hnsw.efConstruction = options.ef_construction
    elif method in ("ivf", "pq"):
        nlist = min(_nlist(n, options), n)
        quantizer = faiss.IndexFlatIP(d)
        if method == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        else:  # 8-bit codes need 256 training points a sub-quantizer; fewer bits for a small index
            index = faiss.IndexIVFPQ(quantizer, d, nlist, _pq_m(d, options), max(1, min(8, int(math.log2(n)))), ip)
        index.train(vectors)
    else:
        raise ConfigError(f"faiss index {method!r}: use one of {', '.join(FAISS_METHODS)}.")
    index.add(vectors)
    return index


def search_index(index: Any, method: str, queries: np.ndarray, k: int, options: FaissOptions,
                 allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)`` of the top ``k`` (rows -1 where an approximate index found fewer), only among the rows
    ``allowed`` when given."""
    faiss = import_faiss()
    selector = {} if allowed is None else {"sel": faiss.IDSelectorBatch(allowed.astype(np.int64))}
    if method in ("ivf", "pq"):
        nprobe = options.nprobe or max(8, index.nlist // 16)
        params = faiss.SearchParametersIVF(nprobe=min(nprobe, index.nlist), **selector)
    elif method == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=options.ef_search or max(64, 2 * k), **selector)
    else:
        params = faiss.SearchParameters(**selector)
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
    scores[rows < 0] = -np.inf
    return scores.astype(np.float32), rows


def cached_index(folder: Path, key: str, vectors: Any, method: str, options: FaissOptions) -> Any:
    """The ``method`` index of the folder's vectors: read from its cache file when one was saved for ``key`` (the
    index's identity) and these options, else built (``vectors()`` gives them) and saved (a folder that cannot be
    written only skips the save, with a warning)."""
    faiss = import_faiss()
    if method == "flat":
        return make_index(vectors(), method, options)
    built_by = {k: v for k, v in asdict(options).items() if k not in ("nprobe", "ef_search")}  # not search-time ones
    tag = hashlib.sha256(json.dumps([key, method, built_by], sort_keys=True).encode()).hexdigest()[:12]
    path = folder / f"faiss-{method}-{tag}.index"
    if path.is_file():
        return faiss.read_index(str(path))
    index = make_index(vectors(), method, options)
    try:
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
    except OSError as exc:
        logger.warning("the trained faiss index was not saved in %s (%s); it is rebuilt next time.", folder, exc)
    return index
