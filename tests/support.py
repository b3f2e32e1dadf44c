"""Helpers shared by test modules in several folders (``tests/`` is on ``sys.path``: its ``conftest.py`` is there):
a tiny LoRA contrastive loss and its rows, the gradients of one step, the hand-written DDP step, a free port."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist

import mmembed
from mmembed import lora
from mmembed.losses import ContrastiveLoss, InfoNCELoss

#: InfoNCE temperature of the sentence-method tests
TAU = 0.05
#: sentences of the SimCSE-family tests
SENTENCES = ["a man is playing a guitar", "two dogs run in the park", "the sun sets over the sea",
             "a woman slices an onion", "children are playing football", "a cat sleeps on the sofa"]
#: texts of the contrastive rows (:func:`contrastive_rows`)
TEXTS = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.",
         "A cat sits on the mat.", "Two dogs run in the park.", "the quick brown fox jumps over the lazy dog",
         "hi", "Shares dropped after the earnings report."]


def lora_embedder(path, template=None, seed=0, dropout=0.0, **load_options) -> mmembed.Embedder:
    """The model at ``path`` (float32, CPU; ``load_options`` for ``mmembed.load``) with a seeded, non-zero LoRA
    adapter (r 4) as its only trainable weights, its language model in training mode."""
    torch.manual_seed(seed)
    embedder = mmembed.load(str(path), template=template, dtype="float32", device="cpu", **load_options)
    base = embedder.backbone.model
    for p in base.parameters():
        p.requires_grad_(False)
    embedder.backbone.model = lora.attach(base, lora.lora_config(base, r=4, alpha=8, dropout=dropout,
                                                                 init_lora_weights=False))
    embedder.backbone.model.train()
    return embedder


def loss_with_lora(path, template=None, seed=0, dropout=0.0, **kwargs) -> ContrastiveLoss:
    """InfoNCE (tau 0.05) over :func:`lora_embedder`; ``kwargs`` go to :class:`ContrastiveLoss` (e.g. gradient
    caching)."""
    return ContrastiveLoss(lora_embedder(path, template, seed, dropout), InfoNCELoss(temperature=0.05), **kwargs)


def grads_of(loss_module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one step on ``batch`` and the gradients it leaves (the same dropout masks every call)."""
    torch.manual_seed(123)
    out = loss_module(**batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in loss_module.named_parameters() if p.grad is not None}
    return out["loss"].detach(), grads


def assert_same_step(a, b) -> None:
    """Two :func:`grads_of` results agree: the same loss and LoRA gradients (relative error < 1e-5)."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert all("lora_" in name for name in grads_a)  # only LoRA weights receive gradients
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=0)
    for name in grads_a:
        err = (grads_a[name] - grads_b[name]).norm() / grads_b[name].norm().clamp(min=1e-12)
        assert err < 1e-5, (name, float(err))


def contrastive_rows(images=None) -> list[dict]:
    """Six (anchor, positive, two negatives) rows over :data:`TEXTS` (positives with ``images``, cycled, if
    given)."""
    rows = []
    for i in range(6):
        side = {"text": TEXTS[i], "image": None}
        positive = {"text": TEXTS[(i + 1) % 8], "image": images[i % len(images)] if images else None}
        rows.append({"anchor": side, "positive": positive,
                     "negative": [{"text": TEXTS[(i + 2 + k) % 8], "image": None} for k in range(2)]})
    return rows


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_mean_step(loss: torch.nn.Module, value: torch.Tensor, rank: int, world: int, out: str) -> None:
    """Backward, then DDP's averaging by hand: gradients all-reduced and divided by ``world``, the loss the mean over
    processes; rank 0 saves both to ``out``."""
    value.backward()
    grads = {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, value.detach())
    if rank == 0:
        torch.save({"loss": torch.stack(losses).mean(), "grads": grads}, out)
