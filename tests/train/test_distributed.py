"""Two processes (gloo) with cross-process gathering give the loss and gradients of one process holding the global
batch, with and without hard negatives (the sentence-transformers #3453 label-offset bug would fail this)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import contrastive_rows, free_port, loss_with_lora, save_mean_step

from mmembed.data.collator import ContrastiveCollator
from mmembed.inputs import PromptTemplate

TEMPLATE = PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True)


def _worker(rank: int, world: int, port: int, path: str, negatives: bool, out: str) -> None:
    import gc

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _step(rank, world, path, negatives, out)
    finally:
        gc.collect()  # free the model before destroying the group: torch + gloo may abort at exit otherwise
        dist.barrier()
        dist.destroy_process_group()


def _step(rank: int, world: int, path: str, negatives: bool, out: str) -> None:
    """One process's share of the global batch; DDP's gradient averaging done by hand; rank 0 saves the result."""
    loss = loss_with_lora(path, TEMPLATE)
    rows = contrastive_rows()
    if not negatives:
        rows = [{k: v for k, v in r.items() if k != "negative"} for r in rows]
    batch = ContrastiveCollator(loss.model.backbone)(rows)
    per = len(rows) // world
    local = {col: _slice_columns(b, rank * per, (rank + 1) * per, col) for col, b in batch.items()}
    loss.model.backbone.model.eval()
    result = loss(**local)
    save_mean_step(loss, result["loss"], rank, world, out)


def _slice_columns(batch: dict, start: int, stop: int, column: str) -> dict:
    from mmembed.losses.gradcache import slice_batch

    per_row = 2 if column == "negative" else 1
    return slice_batch(batch, start * per_row, stop * per_row)


@pytest.mark.parametrize("negatives", [False, True], ids=["in-batch", "hard-negatives"])
def test_two_processes_equal_one_process_with_the_global_batch(qwen2_path, tmp_path, negatives):
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(2, free_port(), str(qwen2_path), negatives, str(out)), nprocs=2,
                       start_method="spawn", join=True)
    distributed = torch.load(out)
    single = loss_with_lora(qwen2_path, TEMPLATE)
    rows = contrastive_rows()
    if not negatives:
        rows = [{k: v for k, v in r.items() if k != "negative"} for r in rows]
    single.model.backbone.model.eval()
    result = single(**ContrastiveCollator(single.model.backbone)(rows))
    result["loss"].backward()
    assert torch.allclose(distributed["loss"], result["loss"].detach(), rtol=1e-5)
    grads = {n: p.grad for n, p in single.named_parameters() if p.grad is not None}
    assert grads.keys() == distributed["grads"].keys()
    for name, g in grads.items():
        err = (distributed["grads"][name] - g).norm() / g.norm().clamp(min=1e-12)
        assert err < 1e-5, (name, float(err))
