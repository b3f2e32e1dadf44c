"""ESimCSE's momentum contrast: an EMA encoder fills a queue of negatives.

The momentum encoder is an exponential moving average of the *trainable* parameters only
(:class:`ParameterEMA`): under LoRA that is the adapter, so the EMA costs the adapter's size, not a second LLM. It
encodes by swapping the averaged values into the live parameters for one no-grad, dropout-off forward pass and
swapping them back. Each step (as ESimCSE's ``CLTrainer`` / ``cl_forward``): the EMA update
``theta_m <- m * theta_m + (1 - m) * theta`` and the anchors encoded by the momentum encoder (computed first, so the
swap never touches parameters the step's graph holds); the loss of the anchors against their repeated-word
positives, the in-batch candidates and the queue as it was; then the momentum-encoded anchors enter the queue
(gathered over processes), the oldest leaving it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .contrastive import ContrastiveLoss, InfoNCELoss
from .negatives import EmbeddingQueue

MOMENTUM = 0.995  # ESimCSE
QUEUE_FACTOR = 2.5  # ESimCSE: neg_size 160 for batch 64


class ParameterEMA(nn.Module):
    """EMA copies (buffers, saved with the loss) of a module's trainable parameters."""

    def __init__(self, module: nn.Module, momentum: float = MOMENTUM) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum {momentum}: give a value in [0, 1).")
        self.momentum = momentum
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError("the module has no trainable parameters to average.")
        params = dict(module.named_parameters())
        for i, name in enumerate(self.names):
            self.register_buffer(f"ema_{i}", params[name].detach().clone())

    def _pairs(self, module: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
        params = dict(module.named_parameters())
        for i, name in enumerate(self.names):
            yield params[name], getattr(self, f"ema_{i}")

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """``ema <- momentum * ema + (1 - momentum) * param``."""
        for param, ema in self._pairs(module):
            ema.mul_(self.momentum).add_(param.detach().to(ema.dtype), alpha=1.0 - self.momentum)

    @contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """The module with its trainable parameters set to the averages (restored on exit)."""
        saved = []
        with torch.no_grad():
            for param, ema in self._pairs(module):
                saved.append(param.detach().clone())
                param.copy_(ema)
        try:
            yield
        finally:
            with torch.no_grad():
                for (param, _), value in zip(self._pairs(module), saved):
                    param.copy_(value)


class MomentumContrastiveLoss(ContrastiveLoss):
    """:class:`ContrastiveLoss` plus ESimCSE's queue of momentum-encoded anchors as extra negatives.

    The queue holds the full model's (normalised) embeddings; a pass on narrower embeddings (a sub-model of
    :class:`~mmembed.losses.elastic.ElasticLoss`) reads their first dimensions, which the engine normalises. The EMA
    update and the momentum pass run once a step (:attr:`~mmembed.losses.base.EmbeddingLoss.updates_state`), the
    push through :meth:`~mmembed.losses.base.EmbeddingLoss.write_state`.

    Args:
        model: the Embedder (its trainable parameters are averaged).
        info_nce: the engine.
        queue_size: queued negatives (ESimCSE: 2.5 x the batch).
        momentum: EMA decay (ESimCSE: 0.995).
    """

    def __init__(self, model: nn.Module, info_nce: InfoNCELoss | None = None, *, queue_size: int,
                 momentum: float = MOMENTUM, **kwargs) -> None:
        super().__init__(model, info_nce, **kwargs)
        self.queue = EmbeddingQueue(queue_size, model.embedding_dim)
        self.ema = ParameterEMA(model, momentum)

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None, **groups: Tensor) -> dict[str, Tensor]:
        # the momentum pass first: it swaps values into the live parameters, which must not change once the
        # step's graph holds them (the loss is still against the queue as it was)
        incoming = None
        if self.updates_state:
            self.ema.update(self.model)
            incoming = self.momentum_embed(anchor)
        q, p, n, keys = self.embed_columns(anchor, positive, negative)
        queued = self.queue.negatives()  # full-width vectors, cut to the width of this pass's embeddings
        out = self.info_nce(q, p, n, **keys, **groups,
                            extra_negatives=queued[:, :q.shape[1]].to(q) if queued is not None else None)
        if incoming is not None:
            self.write_state(lambda: self.queue.push(incoming))
        out["queue_size"] = torch.tensor(float(len(self.queue)))
        return out

    @torch.no_grad()
    def momentum_embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The momentum encoder's embeddings of ``batch`` (dropout off, as ESimCSE)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.ema.swapped_in(self.model):
                vectors, _ = self.model(batch)
        finally:
            self.model.train(was_training)
        return vectors
