"""Encoding for evaluators: every distinct input is embedded once, with the query or document prompt.

Every evaluator encodes through :func:`encode_split` (:func:`encode_side`, :class:`EmbeddingCache`, mteb's encoder):
inside :func:`mmembed.distributed.sharded_encoding` (``mmembed eval`` under ``accelerate launch`` / ``torchrun``) each
process encodes a share of the batches and every process gets all the embeddings, bitwise those of one process.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..distributed import encode_sharded, encoding_processes, gather_shares
from ..errors import InputError


def encode_split(embedder: Any, inputs: Sequence[Any], **kwargs: Any) -> Any:
    """``embedder.encode(list(inputs), **kwargs)`` (an array, or a list of arrays for a multi-vector pooler), split
    among the processes of the open :func:`~mmembed.distributed.sharded_encoding`: an
    :class:`~mmembed.Embedder`'s batches are dealt to the processes (``encode(share=...)``: the same vectors as one
    process, bit for bit), another encoder's inputs are cut into contiguous slices. Call it on every process with the
    same inputs; an error on one process is raised on all."""
    procs = encoding_processes()
    if procs is None or not len(inputs):
        return embedder.encode(list(inputs), **kwargs)
    from ..embedder import Embedder

    if not isinstance(embedder, Embedder):
        return encode_sharded(lambda part: embedder.encode(list(part), **kwargs), inputs, procs)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("convert_to_numpy", "convert_to_tensor")}
    rows = gather_shares(procs, len(inputs),
                         lambda: embedder.encode(list(inputs), share=(procs.rank, procs.world), **kwargs))
    return rows if embedder.multi_vector else np.stack(rows)


def encode_side(embedder: Any, inputs: Sequence[Any], side: str | None = None, *, prompt_name: str | None = None,
                prompt: str | None = None, batch_size: int = 32, show_progress_bar: bool | None = None,
                chunk_size: int = 4096) -> np.ndarray:
    """L2-normalised float32 embeddings ``(n, dim)``, encoded ``chunk_size`` inputs at a time (so the images of a
    large pool are never all decoded at once; each chunk is still sorted by length inside ``encode``). An input
    error names the input by its index in ``inputs``.

    ``side`` ("query" / "document") picks the model's prompt of that name when it has one (as ``encode_queries``
    / ``encode_documents``); an explicit ``prompt_name`` or ``prompt`` wins.
    """
    kwargs: dict[str, Any] = {"batch_size": batch_size, "normalize": True, "show_progress_bar": show_progress_bar}
    if prompt is not None:
        kwargs["prompt"] = prompt
    elif prompt_name is not None:
        kwargs["prompt_name"] = prompt_name
    elif side is not None:
        kwargs.update({"prompt_name": side} if side in (getattr(embedder, "prompts", None) or {}) else {})
    if not len(inputs):
        return np.zeros((0, embedder.embedding_dim), dtype=np.float32)
    chunks = []
    for start in range(0, len(inputs), chunk_size):
        try:
            vectors = encode_split(embedder, inputs[start:start + chunk_size], **kwargs)
        except InputError as exc:  # name the input by its index in ``inputs``, not in the chunk
            where = re.match(r"inputs\[(\d+)\]", str(exc))
            if not start or where is None:
                raise
            raise InputError(f"inputs[{start + int(where[1])}]{str(exc)[where.end():]}") from exc
        if isinstance(vectors, list):  # a multi-vector (special-token) pooler: evaluate the first embedding
            vectors = np.stack([v[0] for v in vectors])
        chunks.append(np.asarray(vectors, dtype=np.float32).reshape(-1, embedder.embedding_dim))
    vectors = np.concatenate(chunks)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class EmbeddingCache:
    """Embeddings keyed by a hashable description of the input, computed once per key (across queries and tasks).

    ``to_input`` turns a key into what ``Embedder.encode`` accepts (a str, an image path, ``{"text", "image"}``).
    """

    def __init__(self, embedder: Any, side: str | None = None, to_input: Any = None, **encode_kwargs: Any):
        self.embedder, self.side, self.encode_kwargs = embedder, side, encode_kwargs
        self.to_input = to_input or (lambda key: key)
        self.vectors: dict[Hashable, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, keys: Sequence[Hashable]) -> np.ndarray:
        """``(len(keys), dim)`` embeddings, encoding the keys not seen before in one call."""
        new = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if new:
            encoded = encode_side(self.embedder, [self.to_input(k) for k in new], self.side, **self.encode_kwargs)
            self.vectors.update(zip(new, encoded))
        if not keys:
            return np.zeros((0, self.embedder.embedding_dim), dtype=np.float32)
        return np.stack([self.vectors[k] for k in keys])
