"""Exact top-k search over large candidate pools in blocks, with bounded memory.

M-BEIR's global pool holds 5.6M candidates; a full ``queries @ pool.T`` score matrix for 1,000 queries would need
22 GB. :func:`topk_search` scores one block of candidates at a time (and a block of queries at a time) and keeps a
running top-k, so besides the pool itself memory is ``query_block x block_size`` scores. The pool can be a
tensor, a numpy array, an ``.npy`` file on disk read block by block (:class:`NpyFile`: only the current block is
in memory), or any iterable of blocks (e.g. embeddings computed on the fly).

Exactly tied scores are ordered by ``torch.topk``, not at random: pass the pool in a shuffled order (as
:mod:`mmembed.eval.mbeir` does) when its order could favour the gold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm


class NpyFile:
    """A 2-d ``.npy`` file read block by block with plain file reads (a memmap would keep every page it touched
    resident, so a scan of a pool larger than RAM would still count it all): ``len()``, ``shape`` and
    ``file[start:stop]`` -> ``np.ndarray``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-d array, got shape {shape}.")
        self.shape, self.dtype = shape, dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("NpyFile reads contiguous row ranges only.")
        row_bytes = self.shape[1] * self.dtype.itemsize
        with self.path.open("rb") as f:
            f.seek(self.offset + start * row_bytes)
            data = np.fromfile(f, dtype=self.dtype, count=max(0, stop - start) * self.shape[1])
        return data.reshape(-1, self.shape[1])


def write_npy_header(f, shape: tuple[int, int], dtype: str = "float32") -> None:
    """Start a ``.npy`` file whose rows are then written with ``f.write(block.tobytes())``."""
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": tuple(shape)})


def _tensor(block: Tensor | np.ndarray) -> Tensor:
    if isinstance(block, Tensor):
        return block
    array = np.ascontiguousarray(block)
    return torch.from_numpy(array if array.flags.writeable else array.copy())  # a read-only memmap block: read it


def _blocks(pool: Tensor | np.ndarray | Iterable, block_size: int) -> Iterator[Tensor]:
    if isinstance(pool, (Tensor, np.ndarray, NpyFile)):
        for start in range(0, len(pool), block_size):
            yield _tensor(pool[start:start + block_size])
    else:
        for block in pool:
            yield _tensor(block)


@torch.inference_mode()
def topk_search(queries: Tensor | np.ndarray, pool: Tensor | np.ndarray | NpyFile | Iterable, k: int = 10, *,
                block_size: int = 65536, query_block: int = 1024, device: str | torch.device | None = None,
                dtype: torch.dtype = torch.float32, show_progress_bar: bool = False) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` inner products of each query against the pool: ``(scores, indices)``, both ``(q, k)``,
    best first (indices into the pool's order). Normalise both sides beforehand for cosine similarity.

    ``k`` larger than the pool is clipped to the pool size.
    """
    queries = torch.as_tensor(queries)
    device = torch.device(device) if device is not None else queries.device
    queries = queries.to(device=device, dtype=dtype)
    n_queries = queries.shape[0]
    best_scores = torch.full((n_queries, 0), float("-inf"), device=device, dtype=dtype)
    best_index = torch.zeros((n_queries, 0), device=device, dtype=torch.long)
    offset = 0
    total = len(pool) if hasattr(pool, "__len__") else None
    progress = tqdm(total=total, desc="Scoring", unit="cand", unit_scale=True, disable=not show_progress_bar)
    for block in _blocks(pool, block_size):
        block = block.to(device=device, dtype=dtype)
        if block.shape[-1] != queries.shape[-1]:
            raise ValueError(f"pool embeddings have dimension {block.shape[-1]}, queries {queries.shape[-1]}.")
        n = block.shape[0]
        new_scores, new_index = [], []
        for start in range(0, n_queries, query_block):
            rows = slice(start, start + query_block)
            top, position = (queries[rows] @ block.T).topk(min(k, n), dim=1, sorted=False)
            scores = torch.cat([best_scores[rows], top], dim=1)
            index = torch.cat([best_index[rows], position + offset], dim=1)
            top, position = scores.topk(min(k, scores.shape[1]), dim=1, sorted=True)
            new_scores.append(top)
            new_index.append(index.gather(1, position))
        best_scores, best_index = torch.cat(new_scores), torch.cat(new_index)
        offset += n
        progress.update(n)
    progress.close()
    return best_scores, best_index
