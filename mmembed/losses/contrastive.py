"""InfoNCE: the contrastive loss engine every recipe uses.

For each query ``q_i`` the candidates are all positives and all hard negatives of the (global) batch; the scores
``s_ij = cos(q_i, c_j) / tau``. Layout of the candidate columns after gathering across processes: ``[P_all; N_all]``,
positives of every rank first (``m`` per query, query ``g``'s at columns ``g*m ... g*m+m-1``), then the negatives
(``k`` per query). Because positives and negatives are gathered separately, a query's label is its global index
whatever the number of hard negatives (the label-offset bug sentence-transformers fixed in PR #3453 cannot occur).

With several positives per query each positive is a target of its own with the query's other positives masked, and
the loss averages over them. Masks remove false negatives: candidates whose key (e.g. a hash of the text) equals one
of the query's positives' keys, and candidates of the same group as the query (``group_ids``: MuCo's turns of one
conversation). ``symmetric`` adds the reverse direction (each positive against all queries).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gather import gather, gather_with_grad
from .gradcache import cached_embed


def _exclusion_mask(row_keys: Tensor | None, col_keys: Tensor | None, row_groups: Tensor | None,
                    col_groups: Tensor | None, targets: Tensor) -> Tensor | None:
    """True where column j is a false negative of row i (same key or same group, and not a target of i)."""
    mask = None
    for rows, cols in ((row_keys, col_keys), (row_groups, col_groups)):
        if rows is None or cols is None:
            continue
        same = rows[:, :, None] == cols[None, None, :] if rows.dim() == 2 else rows[:, None] == cols[None, :]
        same = same.any(1) if same.dim() == 3 else same
        mask = same if mask is None else mask | same
    if mask is not None:
        mask = mask & ~targets
    return mask


class InfoNCELoss(nn.Module):
    """InfoNCE over [positives; hard negatives; in-batch negatives], gathered across processes with gradients.

    Args:
        temperature: ``tau`` (LCO: 0.03, VLM2Vec / MuCo: 0.02, SimCSE: 0.05).
        learnable_temperature: learn ``log(1/tau)`` (CLIP style, clamped to ``tau >= 0.01``).
        symmetric: add the reverse direction, positives -> queries.
        gather_across_devices: use the candidates of every process as negatives.
    """

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False, symmetric: bool = False,
                 gather_across_devices: bool = True) -> None:
        super().__init__()
        scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(scale) if learnable_temperature else None
        self.register_buffer("fixed_log_scale", scale, persistent=False)
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices

    @property
    def scale(self) -> Tensor:
        if self.log_scale is None:
            return self.fixed_log_scale.exp()
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def _gather(self, x: Tensor | None, grad: bool = True) -> tuple[Tensor | None, int]:
        if x is None or not self.gather_across_devices:
            return x, 0
        return gather_with_grad(x) if grad else (gather(x), 0)

    def forward(
        self,
        queries: Tensor,
        positives: Tensor,
        negatives: Tensor | None = None,
        *,
        query_keys: Tensor | None = None,
        positive_keys: Tensor | None = None,
        negative_keys: Tensor | None = None,
        query_groups: Tensor | None = None,
        positive_groups: Tensor | None = None,
        negative_groups: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss of local ``queries (B, d)`` against ``positives (B*m, d)`` and ``negatives (B*k, d)``.

        ``*_keys`` (int64, one per row) mark identical texts / ids; ``*_groups`` mark rows that must not be each
        other's negatives. Returns ``{"loss", "loss_q2c"[, "loss_c2q"], "accuracy", "temperature"}``.
        """
        b = queries.shape[0]
        m = positives.shape[0] // b
        if positives.shape[0] != b * m or m < 1:
            raise ValueError(f"{positives.shape[0]} positives for {b} queries: give the same number per query.")
        q, p, n = (F.normalize(x, dim=-1) if x is not None else None for x in (queries, positives, negatives))
        all_p, offset = self._gather(p)
        all_n, _ = self._gather(n)
        candidates = all_p if all_n is None else torch.cat([all_p, all_n])
        col_keys = self._cat_gathered(positive_keys, negative_keys, n is not None)
        col_groups = self._cat_gathered(positive_groups, negative_groups, n is not None)
        query_index = torch.arange(b, device=q.device) + offset // m  # global indices of the local queries
        scores = q @ candidates.T * self.scale
        columns = torch.arange(candidates.shape[0], device=q.device)
        targets = (columns[None, :] // m == query_index[:, None]) & (columns[None, :] < all_p.shape[0])
        row_keys = positive_keys.view(b, m) if positive_keys is not None else None
        exclude = _exclusion_mask(row_keys, col_keys, query_groups, col_groups, targets)
        loss_q2c = self._multi_positive_ce(scores, targets, exclude)
        parts = {"loss_q2c": loss_q2c}
        loss = loss_q2c
        if self.symmetric:
            all_q, q_offset = self._gather(q)
            rev_scores = p @ all_q.T * self.scale  # local positives against all queries
            owner = torch.arange(p.shape[0], device=q.device) // m + q_offset
            rev_targets = torch.arange(all_q.shape[0], device=q.device)[None, :] == owner[:, None]
            rev_exclude = None
            all_qk = self._gather(query_keys, grad=False)[0] if query_keys is not None else None
            all_qg = self._gather(query_groups, grad=False)[0] if query_groups is not None else None
            if all_qg is not None:
                rev_exclude = _exclusion_mask(None, None, query_groups.repeat_interleave(m), all_qg, rev_targets)
            if all_qk is not None and query_keys is not None:
                same = (query_keys.repeat_interleave(m)[:, None] == all_qk[None, :]) & ~rev_targets
                rev_exclude = same if rev_exclude is None else rev_exclude | same
            parts["loss_c2q"] = self._multi_positive_ce(rev_scores, rev_targets, rev_exclude)
            loss = (loss_q2c + parts["loss_c2q"]) / 2
        with torch.no_grad():
            masked = scores.masked_fill(exclude, float("-inf")) if exclude is not None else scores
            best = masked.argmax(1)
            accuracy = targets[torch.arange(b, device=q.device), best].float().mean()
        return {"loss": loss, **parts, "accuracy": accuracy, "temperature": (1.0 / self.scale).detach()}

    def _cat_gathered(self, a: Tensor | None, b: Tensor | None, has_negatives: bool) -> Tensor | None:
        """Gathered per-column values (keys or groups) in candidate order ``[positives; negatives]``."""
        if a is None and b is None:
            return None
        if has_negatives and (a is None or b is None):
            raise ValueError("give keys / groups for both positives and negatives, or for neither.")
        a = self._gather(a, grad=False)[0]
        return torch.cat([a, self._gather(b, grad=False)[0]]) if has_negatives else a

    @staticmethod
    def _multi_positive_ce(scores: Tensor, targets: Tensor, exclude: Tensor | None) -> Tensor:
        """Mean over (row, target) pairs of cross-entropy with that target, other targets and exclusions masked."""
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        rows, cols = targets.nonzero(as_tuple=True)
        if targets.sum(1).max() == 1:
            return F.cross_entropy(scores, targets.float().argmax(1))
        expanded = scores[rows].masked_fill(targets[rows], float("-inf"))
        expanded[torch.arange(len(rows), device=scores.device), cols] = scores[rows, cols]
        return F.cross_entropy(expanded, cols)


class ContrastiveLoss(nn.Module):
    """What ``Trainer`` trains: an Embedder and an :class:`InfoNCELoss` over the collator's columns.

    ``forward(anchor=..., positive=..., negative=...)`` takes the tokenized columns of
    :class:`~mmembed.data.collator.ContrastiveCollator`, embeds them (with gradient caching when ``mini_batch_size``
    or ``mini_batch_tokens`` is set, :mod:`mmembed.losses.gradcache`) and returns the loss and its logged parts. The
    Embedder is a submodule, so DDP / DeepSpeed wrap one module whose forward does the whole step.

    Args:
        model: the :class:`~mmembed.embedder.Embedder` to train.
        info_nce: the loss on embeddings (temperature, symmetric, gathering).
        mini_batch_size / mini_batch_tokens: gradient-caching mini-batches by count / padded tokens.
        mask_duplicates: identical inputs (same text and image) are not each other's negatives.
    """

    def __init__(self, model: nn.Module, info_nce: InfoNCELoss | None = None, mini_batch_size: int | None = None,
                 mini_batch_tokens: int | None = None, mask_duplicates: bool = True) -> None:
        super().__init__()
        self.model = model
        self.info_nce = info_nce or InfoNCELoss()
        self.mini_batch_size = mini_batch_size
        self.mini_batch_tokens = mini_batch_tokens
        self.mask_duplicates = mask_duplicates

    @property
    def config(self):
        """The language model's config (DeepSpeed's "auto" bucket sizes read ``config.hidden_size``)."""
        return self.model.backbone.config.get_text_config()

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        vectors, _ = cached_embed(self.model, batch, self.mini_batch_size, self.mini_batch_tokens)
        return vectors

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None, **groups: Tensor) -> dict[str, Tensor]:
        q, p = self.embed(anchor), self.embed(positive)
        n = self.embed(negative) if negative is not None else None
        keys = {}
        if self.mask_duplicates:
            keys = {"query_keys": anchor["keys"], "positive_keys": positive["keys"],
                    "negative_keys": negative["keys"] if negative is not None else None}
        return self.info_nce(q, p, n, **keys, **groups)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Activation checkpointing inside the backbone (Trainer calls this for ``gradient_checkpointing=True``)."""
        base = self.model.backbone.model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
                                           or {"use_reentrant": False})
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()
