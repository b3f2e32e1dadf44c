"""Elastic embeddings: any embedding loss at several (layer, dimension) pairs of one forward pass.

An elastic model can be cut at inference in depth and width: ``mmembed.load(path, layer=L, dim=D)`` runs only its
first ``L`` layers (early exit) and keeps the first ``D`` dimensions. Training makes those cuts good
(``sentence_methods.md`` §5):

- **Starbucks** (``mode="fixed"``, the default): a fixed list of pairs from small to large, every pair every step,
  each weighted 1, plus a KL term aligning each sub-model with the full model on its first ``d`` dimensions
  (temperature 0.3). Default pairs: ``L = n/6, 2n/6, ... n`` layers with ``D/24, D/12, D/6, D/3, 2D/3, D``
  dimensions (BERT-base: (2, 32), (4, 64) ... (12, 768), the paper's list).
- **2DMSE** (``mode="random"``): each step one layer ``i < n`` and one width ``d`` are drawn; the loss adds the pairs
  ``(i, D)``, ``(n, d)`` and ``(i, d)``, layer ``i``'s weighted ``1 / i``, and the KL term for layer ``i``.

The full model's loss (weight ``last_weight``) is always included. Intermediate layers pass the model's final norm
(:meth:`~mmembed.backbone.Backbone.states_at`), with the same pooling positions at every layer. Project choices,
not the papers': the KL term compares the softmax over the *L2-normalised* first ``d`` dimensions (raw LLM states
have outlier channels in the hundreds, which turn a softmax at T = 0.3 into a one-hot), and it is ``T * KL(full ||
sub)`` with the full side not detached, as in sentence-transformers' ``AdaptiveLayerLoss``. The sampled pairs
follow a step counter saved with the loss, so a resumed run draws what the uninterrupted one would have, and every
process draws the same pairs. Gradient caching is not supported (as in sentence-transformers' 2D loss): the loss
needs every layer's states of the whole batch at once.

:class:`ElasticLoss` wraps a loss, as sentence-transformers' ``MatryoshkaLoss`` wraps any loss: each column is embedded
once, at every needed layer, and the wrapped loss runs once per pair with its embedding step
(:meth:`~mmembed.losses.base.EmbeddingLoss.embedding_source`) returning the column's pooled vectors at that layer,
cut to that width (pooled, not normalised: the wrapped loss normalises as it does for the Embedder's vectors; the KL
term covers every column it embeds). Losses with state run their passes inside
:meth:`~mmembed.losses.base.EmbeddingLoss.shared_step`: the full model's pass does the step's work (ESimCSE's EMA
update and momentum pass, MultiCSR's reference pass), every pass reads the state as it was (a queue or memory bank of
full-model vectors, cut to the pass's width; the reference model's masks), and the state is written once, after the
last pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import EmbeddingLoss
from .contrastive import ContrastiveLoss, InfoNCELoss

#: Starbucks' list for BERT-base as fractions of depth and width: (2, 32), (4, 64) ... (12, 768)
STARBUCKS_FRACTIONS = ((1 / 6, 1 / 24), (2 / 6, 1 / 12), (3 / 6, 1 / 6), (4 / 6, 1 / 3), (5 / 6, 2 / 3), (1.0, 1.0))
MODES = ("fixed", "random")
LAYER_WEIGHTS = ("constant", "inverse")


def starbucks_pairs(num_layers: int, dim: int) -> list[tuple[int, int]]:
    """Starbucks' six (layers, dimensions) pairs scaled to a model of ``num_layers`` layers and width ``dim``."""
    pairs = []
    for depth, width in STARBUCKS_FRACTIONS:
        pair = (max(1, round(num_layers * depth)), max(1, round(dim * width)))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def geometric_dims(dim: int, base: int = 8) -> list[int]:
    """2DMSE's widths: ``base, 2*base, 4*base ...`` below ``dim``."""
    dims, d = [], base
    while d < dim:
        dims.append(d)
        d *= 2
    return dims or [dim]


class LayerCache:
    """Each column's pooled vectors at several layers from one forward pass, handed out as embedding sources.

    :meth:`compute` (the full model's pass) runs the backbone up to the deepest layer and pools every layer;
    :meth:`cut` returns what a sub-model would have given: the vectors at ``layers``, first ``width`` dimensions.
    Columns are recognised by identity (the wrapped loss gets the same batch dicts in every pass).
    """

    def __init__(self, model: nn.Module, layers: list[int]) -> None:
        self.model = model
        self.layers = layers
        self.entries: list[tuple[dict[str, Tensor], dict[int, Tensor], Tensor]] = []  # (batch, vectors, counts)

    def compute(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Pooled vectors (not normalised) of ``batch`` at the last layer; every layer is kept for :meth:`cut`."""
        states = self.model.backbone.states_at(batch, self.layers)
        moved = {k: v.to(states[0].device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        pooled = [self.model.pooler(hidden, moved) for hidden in states]
        vectors = {layer: p[0] for layer, p in zip(self.layers, pooled)}
        self.entries.append((batch, vectors, pooled[-1][1]))
        return vectors[self.layers[-1]], pooled[-1][1]

    def cut(self, layers: int, width: int) -> Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]:
        """An embedding source giving each column's vectors at ``layers``, first ``width`` dimensions."""
        def source(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            for seen, vectors, counts in self.entries:
                if seen is batch:
                    return vectors[layers][:, :width], counts
            raise ValueError("the wrapped loss embedded a column in a sub-model's pass that its full pass did not: "
                             "ElasticLoss needs the same columns in every pass.")
        return source

    def rows(self, layers: int, width: int | None = None) -> Tensor:
        """Every column's vectors at ``layers`` (first ``width`` dimensions), stacked in embedding order."""
        return torch.cat([vectors[layers][:, :width] for _, vectors, _ in self.entries])


class ElasticLoss(nn.Module):
    """Any embedding loss at the full model and at chosen (layers, dimensions) pairs, plus a KL alignment term.

    The wrapped loss's submodules (the Embedder as ``model``, its engine, queue, banks ...) are this module's
    submodules under the same names, so its state (``step`` added) saves and loads as the unwrapped loss's does.
    ``forward`` takes the wrapped loss's batch and returns ``{"loss", "loss_full"[, "accuracy"], "loss_LxD" ...,
    "kl_LxD" ...}``.

    Args:
        loss: the :class:`~mmembed.losses.base.EmbeddingLoss` to train at every pair (without gradient caching), or
            an Embedder: then the plain :class:`~mmembed.losses.contrastive.ContrastiveLoss` with ``info_nce``.
        info_nce: with an Embedder, the engine (any of its options: hard negatives, reference masks, whitening ...).
        pairs: ``mode="fixed"``: the (layers, dimensions) pairs (default: :func:`starbucks_pairs`); the full pair
            ``(num_layers, hidden)`` is the last-layer loss and is not counted twice.
        mode: ``"fixed"`` (Starbucks: all pairs every step) or ``"random"`` (2DMSE: one layer and width a step).
        dims: ``mode="random"``: the widths to draw from (default :func:`geometric_dims`).
        layer_weight: ``"constant"`` (1, Starbucks) or ``"inverse"`` (1 / layers, 2DMSE); default by mode.
        last_weight: weight of the full model's loss.
        kl_weight / kl_temperature: the alignment term (0 turns it off).
        seed: of the random pairs.
        mask_duplicates: with an Embedder, the plain loss's option.
    """

    def __init__(self, loss: nn.Module, info_nce: InfoNCELoss | None = None, *,
                 pairs: list[tuple[int, int]] | None = None, mode: str = "fixed", dims: list[int] | None = None,
                 layer_weight: str | None = None, last_weight: float = 1.0, kl_weight: float = 1.0,
                 kl_temperature: float = 0.3, seed: int = 0, mask_duplicates: bool = True) -> None:
        super().__init__()
        if not isinstance(loss, EmbeddingLoss):
            loss = ContrastiveLoss(loss, info_nce, mask_duplicates=mask_duplicates)
        elif info_nce is not None:
            raise ValueError("give info_nce to the wrapped loss, not to ElasticLoss.")
        self._wrapped = (loss,)  # not a submodule: its submodules are ours (no second copy of the Embedder)
        for name, child in loss.named_children():
            self.add_module(name, child)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; choose one of {MODES}.")
        layer_weight = layer_weight or ("constant" if mode == "fixed" else "inverse")
        if layer_weight not in LAYER_WEIGHTS:
            raise ValueError(f"layer_weight={layer_weight!r}; choose one of {LAYER_WEIGHTS}.")
        self.mode, self.layer_weight, self.last_weight, self.seed = mode, layer_weight, last_weight, seed
        self.kl_weight, self.kl_temperature = kl_weight, kl_temperature
        self._set_pairs(pairs, dims)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _set_pairs(self, pairs: list[tuple[int, int]] | None, dims: list[int] | None) -> None:
        backbone = self.model.backbone
        self.num_layers, self.dim = backbone.num_layers, backbone.hidden_size
        if backbone.layer != -1:
            raise ValueError(f"elastic training needs the full model, but the embedder exits at layer "
                             f"{backbone.layer}: load it without layer=.")
        self.pairs = [(int(a), int(b)) for a, b in pairs] if pairs else starbucks_pairs(self.num_layers, self.dim)
        self.dims = list(dims) if dims else geometric_dims(self.dim)
        for layers, width in self.pairs + [(self.num_layers, d) for d in self.dims]:
            if not (1 <= layers <= self.num_layers and 1 <= width <= self.dim):
                raise ValueError(f"pair ({layers}, {width}) is outside the model's {self.num_layers} layers x "
                                 f"{self.dim} dimensions.")
        if self.mode == "random" and self.num_layers < 2:
            raise ValueError("mode='random' draws a layer below the last one; this model has a single layer.")

    @property
    def loss(self) -> EmbeddingLoss:
        """The wrapped loss."""
        return self._wrapped[0]

    @property
    def config(self):
        """The language model's config (DeepSpeed's "auto" bucket sizes read ``config.hidden_size``)."""
        return self.loss.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Activation checkpointing inside the backbone (as the wrapped loss)."""
        self.loss.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def train(self, mode: bool = True) -> ElasticLoss:
        super().train(mode)
        self.loss.train(mode)  # the wrapped loss's own flag (its submodules are ours)
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.loss._apply(fn, *args, **kwargs)  # tensors held by the wrapped loss itself (e.g. DefSent+'s targets)
        return self

    def step_pairs(self) -> list[tuple[int, int]]:
        """The pairs this step trains besides the full model (the random mode draws from ``seed + step``)."""
        full = (self.num_layers, self.dim)
        if self.mode == "fixed":
            return [p for p in self.pairs if p != full]
        generator = torch.Generator().manual_seed(self.seed + int(self.step))
        layer = int(torch.randint(1, self.num_layers, (1,), generator=generator))
        width = self.dims[int(torch.randint(len(self.dims), (1,), generator=generator))]
        return [p for p in dict.fromkeys([(layer, self.dim), (self.num_layers, width), (layer, width)]) if p != full]

    def weight(self, layers: int) -> float:
        return 1.0 / layers if self.layer_weight == "inverse" and layers < self.num_layers else 1.0

    def kl(self, sub: Tensor, full: Tensor, width: int) -> Tensor:
        """``T * KL(softmax(full_d / T) || softmax(sub_d / T))`` over the normalised first ``width`` dimensions."""
        t = self.kl_temperature
        student = F.normalize(sub[:, :width].float(), dim=-1) / t
        teacher = F.normalize(full[:, :width].float(), dim=-1) / t
        return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), reduction="batchmean",
                        log_target=True) * t

    def forward(self, *args: Tensor | dict[str, Tensor], **batch: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
        inner = self.loss
        if inner.mini_batch_size or inner.mini_batch_tokens:
            raise ValueError("ElasticLoss does not support gradient caching; drop mini_batch_size / "
                             "mini_batch_tokens.")
        chosen = self.step_pairs()
        if self.training:
            self.step += 1
        cache = LayerCache(self.model, sorted({self.num_layers} | {layers for layers, _ in chosen}))
        with inner.shared_step() as repeat:
            with inner.embedding_source(cache.compute):
                out = inner(*args, **batch)
            loss = self.last_weight * out["loss"]
            parts = {"loss_full": out["loss"].detach(), **({"accuracy": out["accuracy"]} if "accuracy" in out else {})}
            full_rows = cache.rows(self.num_layers)
            for layers, width in chosen:
                repeat()
                with inner.embedding_source(cache.cut(layers, width)):
                    part = inner(*args, **batch)["loss"]
                loss = loss + self.weight(layers) * part
                parts[f"loss_{layers}x{width}"] = part.detach()
                if self.kl_weight and self.kl_temperature > 0 and layers < self.num_layers:
                    kl = self.kl(cache.rows(layers, width), full_rows, width)
                    loss = loss + self.kl_weight * kl
                    parts[f"kl_{layers}x{width}"] = kl.detach()
        return {"loss": loss, **parts}
