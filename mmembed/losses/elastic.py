"""Elastic embeddings: the engine's loss at several (layer, dimension) pairs of one forward pass.

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class ElasticLoss(ContrastiveLoss):
    """The InfoNCE engine at the full model and at chosen (layers, dimensions) pairs, plus a KL alignment term.

    Args:
        model: the Embedder to train.
        info_nce: the engine (any of its options: hard negatives, reference masks, whitening ...).
        pairs: ``mode="fixed"``: the (layers, dimensions) pairs (default: :func:`starbucks_pairs`); the full pair
            ``(num_layers, hidden)`` is the last-layer loss and is not counted twice.
        mode: ``"fixed"`` (Starbucks: all pairs every step) or ``"random"`` (2DMSE: one layer and width a step).
        dims: ``mode="random"``: the widths to draw from (default :func:`geometric_dims`).
        layer_weight: ``"constant"`` (1, Starbucks) or ``"inverse"`` (1 / layers, 2DMSE); default by mode.
        last_weight: weight of the full model's loss.
        kl_weight / kl_temperature: the alignment term (0 turns it off).
        seed: of the random pairs.
    """

    def __init__(self, model: nn.Module, info_nce: InfoNCELoss | None = None, *,
                 pairs: list[tuple[int, int]] | None = None, mode: str = "fixed", dims: list[int] | None = None,
                 layer_weight: str | None = None, last_weight: float = 1.0, kl_weight: float = 1.0,
                 kl_temperature: float = 0.3, seed: int = 0, mask_duplicates: bool = True) -> None:
        super().__init__(model, info_nce, mask_duplicates=mask_duplicates)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; choose one of {MODES}.")
        layer_weight = layer_weight or ("constant" if mode == "fixed" else "inverse")
        if layer_weight not in LAYER_WEIGHTS:
            raise ValueError(f"layer_weight={layer_weight!r}; choose one of {LAYER_WEIGHTS}.")
        backbone = model.backbone
        self.num_layers, self.dim = backbone.num_layers, backbone.hidden_size
        if backbone.layer != -1:
            raise ValueError(f"elastic training needs the full model, but the embedder exits at layer "
                             f"{backbone.layer}: load it without layer=.")
        self.mode = mode
        self.pairs = [(int(a), int(b)) for a, b in pairs] if pairs else starbucks_pairs(self.num_layers, self.dim)
        self.dims = list(dims) if dims else geometric_dims(self.dim)
        for layers, width in self.pairs + [(self.num_layers, d) for d in self.dims]:
            if not (1 <= layers <= self.num_layers and 1 <= width <= self.dim):
                raise ValueError(f"pair ({layers}, {width}) is outside the model's {self.num_layers} layers x "
                                 f"{self.dim} dimensions.")
        if mode == "random" and self.num_layers < 2:
            raise ValueError("mode='random' draws a layer below the last one; this model has a single layer.")
        self.layer_weight = layer_weight
        self.last_weight = last_weight
        self.kl_weight = kl_weight
        self.kl_temperature = kl_temperature
        self.seed = seed
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

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

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None, **groups: Tensor) -> dict[str, Tensor]:
        if self.mini_batch_size or self.mini_batch_tokens:
            raise ValueError("ElasticLoss does not support gradient caching; drop mini_batch_size / "
                             "mini_batch_tokens.")
        chosen = self.step_pairs()
        if self.training:
            self.step += 1
        layers = sorted({self.num_layers} | {layers for layers, _ in chosen})
        columns = [anchor, positive] + ([negative] if negative is not None else [])
        pooled = [self.model.pooled_layers(column, layers) for column in columns]
        at = {layer: [p[i] for p in pooled] for i, layer in enumerate(layers)}
        keys = {}
        if self.mask_duplicates:
            keys = {"query_keys": anchor["keys"], "positive_keys": positive["keys"],
                    "negative_keys": negative["keys"] if negative is not None else None}
        full = at[self.num_layers]
        self.check_views(anchor, positive, full[0], full[1])

        def engine(vectors: list[Tensor]) -> dict[str, Tensor]:
            q, p, *n = vectors
            return self.info_nce(q, p, n[0] if n else None, **keys, **groups)

        out = engine(full)
        loss = self.last_weight * out["loss"]
        parts = {"loss_full": out["loss"].detach(), "accuracy": out["accuracy"]}
        full_rows = torch.cat(full)
        for layers, width in chosen:
            vectors = [v[:, :width] for v in at[layers]]
            part = engine(vectors)["loss"]
            loss = loss + self.weight(layers) * part
            parts[f"loss_{layers}x{width}"] = part.detach()
            if self.kl_weight and self.kl_temperature > 0 and layers < self.num_layers:
                kl = self.kl(torch.cat(vectors), full_rows, width)
                loss = loss + self.kl_weight * kl
                parts[f"kl_{layers}x{width}"] = kl.detach()
        return {"loss": loss, **parts}
