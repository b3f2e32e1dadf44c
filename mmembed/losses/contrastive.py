"""InfoNCE: the contrastive loss engine every recipe uses.

For each query ``q_i`` the candidates are all positives and all hard negatives of the (global) batch; the scores
``s_ij = cos(q_i, c_j) / tau``. Layout of the candidate columns after gathering across processes: ``[P_all; N_all]``,
positives of every rank first (``m`` per query, query ``g``'s at columns ``g*m ... g*m+m-1``), then the negatives
(``k`` per query, or any number per query, none included, with ``negative_owners``: the collator's batches of rows
with and without hard negatives). Because positives and negatives are gathered separately, a query's label is its
global index whatever the number of hard negatives (the label-offset bug sentence-transformers fixed in PR #3453
cannot occur). Every hard negative is a candidate of every query; which query owns it only matters for
``hard_negative_weight``.

With several positives per query each positive is a target of its own with the query's other positives masked, and
the loss averages over them. Masks remove false negatives: candidates whose key (e.g. a hash of the text) equals one
of the query's positives' keys, and candidates of the same group as the query (``group_ids``: MuCo's turns of one
conversation). ``symmetric`` adds the reverse direction (each positive against all queries).

The sentence-embedding methods plug in here (``sentence_methods.md`` §0: which columns, masks and biases):
``hard_negative_weight`` (SimCSE: a log-weight on each query's own hard negatives), ``extra_negatives`` (columns
after ``[P_all; N_all]`` shared by all processes: ESimCSE's momentum queue, CCP's memory banks, with a per-query
``extra_exclude`` mask), ``reference`` embeddings from a frozen model (MultiCSR: candidates it scores above
``false_negative_threshold`` are masked with -inf), and a ``view_transform`` on the gathered embeddings
(WhitenedCSE's shuffled group whitening; the query is view 0, positive ``j`` view ``j + 1``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import EmbeddingLoss
from .gather import gather, gather_with_grad, is_distributed


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


@dataclass
class InfoNCEInputs:
    """The engine's optional inputs besides the embeddings.

    ``*_keys`` (int64, one per row) mark identical texts / ids; ``*_groups`` mark rows that must not be each other's
    negatives. ``extra_negatives (M, d)`` are the same on every process (not gathered), ``extra_exclude (B, M)``
    masks some of them per query. ``reference`` holds a frozen model's embeddings of the same rows (``"queries"``,
    ``"positives"``[, ``"negatives"``]) for ``false_negative_threshold``. ``negative_owners`` (int64): the local
    query index of each hard negative (any number per query).
    """

    query_keys: Tensor | None = None
    positive_keys: Tensor | None = None
    negative_keys: Tensor | None = None
    query_groups: Tensor | None = None
    positive_groups: Tensor | None = None
    negative_groups: Tensor | None = None
    extra_negatives: Tensor | None = None
    extra_exclude: Tensor | None = None
    reference: dict[str, Tensor] | None = None
    negative_owners: Tensor | None = None


@dataclass
class _Columns:
    """The normalised local queries and the gathered candidate columns of one engine call."""

    q: Tensor  # local queries
    all_q: Tensor | None  # every process's queries (view_transform only)
    all_p: Tensor
    all_n: Tensor | None
    offset: int  # of this process's positives in all_p
    candidates: Tensor  # [P_all; N_all; extra]
    keys: Tensor | None  # per gathered column
    groups: Tensor | None
    n_gathered: int  # columns of P_all and N_all


class InfoNCELoss(nn.Module):
    """InfoNCE over [positives; hard negatives; in-batch negatives], gathered across processes with gradients.

    Args:
        temperature: ``tau`` (LCO: 0.03, VLM2Vec / MuCo: 0.02, SimCSE: 0.05).
        learnable_temperature: learn ``log(1/tau)`` (CLIP style, clamped to ``tau >= 0.01``).
        symmetric: add the reverse direction, positives -> queries.
        gather_across_devices: use the candidates of every process as negatives.
        hard_negative_weight: added to the logits of each query's own hard negatives (SimCSE's log-weight; 0 = none).
        false_negative_threshold: with ``reference`` embeddings, mask candidates whose reference cosine with the
            query exceeds this (MultiCSR: 0.95).
        view_transform: applied to the gathered embeddings before scoring, ``[queries, positives 1..m] -> same``
            (e.g. :class:`~mmembed.losses.whitening.ShuffledGroupWhitening`); training-only.
    """

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False, symmetric: bool = False,
                 gather_across_devices: bool = True, hard_negative_weight: float = 0.0,
                 false_negative_threshold: float | None = None, view_transform: nn.Module | None = None) -> None:
        super().__init__()
        scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(scale) if learnable_temperature else None
        self.register_buffer("fixed_log_scale", scale, persistent=False)
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices
        self.hard_negative_weight = hard_negative_weight
        self.false_negative_threshold = false_negative_threshold
        self.view_transform = view_transform

    @property
    def scale(self) -> Tensor:
        if self.log_scale is None:
            return self.fixed_log_scale.exp()
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def _gather(self, x: Tensor | None, grad: bool = True) -> tuple[Tensor | None, int]:
        if x is None or not self.gather_across_devices:
            return x, 0
        return gather_with_grad(x) if grad else (gather(x), 0)

    def forward(self, queries: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
                return_logits: bool = False, **inputs: Tensor | dict[str, Tensor] | None) -> dict[str, Tensor]:
        """Loss of local ``queries (B, d)`` against ``positives (B*m, d)`` and ``negatives (B*k, d)``, or, with
        ``negative_owners``, any number of negatives per query; ``inputs`` are :class:`InfoNCEInputs`' fields.

        Returns ``{"loss", "loss_q2c"[, "loss_c2q"], "accuracy", "temperature"}`` (and ``"logits"``, the masked
        ``(B, C)`` scores after the weights, with ``return_logits``).
        """
        options = InfoNCEInputs(**inputs)
        b = queries.shape[0]
        m = positives.shape[0] // b
        if positives.shape[0] != b * m or m < 1:
            raise ValueError(f"{positives.shape[0]} positives for {b} queries: give the same number per query.")
        owners = self._owners(b, negatives, options.negative_owners)
        cols, options = self._columns(queries, positives, negatives, options)
        query_index = torch.arange(b, device=cols.q.device) + cols.offset // m  # global indices of the local queries
        scores, targets = self._scores(cols, owners, query_index, m)
        exclude = self._exclusions(cols, options, targets, m)
        return self._result(cols, options, scores, targets, exclude, m, return_logits)

    def _columns(self, queries: Tensor, positives: Tensor, negatives: Tensor | None, options: InfoNCEInputs
                 ) -> tuple[_Columns, InfoNCEInputs]:
        """Normalise and gather the columns: ``[P_all; N_all; extra]`` with their keys and groups."""
        all_q = None
        if self.view_transform is not None:
            q, all_q, all_p, offset = self._transformed_views(queries, positives, negatives)
            all_n = None
        else:
            q, p, n = (F.normalize(x, dim=-1) if x is not None else None for x in (queries, positives, negatives))
            all_p, offset = self._gather(p)
            all_n = self._gather_negatives(n, q)
        if negatives is None and all_n is not None:  # another process's rows have hard negatives, ours none
            empty = torch.zeros(0, dtype=torch.long, device=q.device)
            options = replace(options, negative_keys=empty if options.positive_keys is not None else None,
                              negative_groups=empty if options.positive_groups is not None else None)
        columns_list = [all_p] + ([all_n] if all_n is not None else [])
        if options.extra_negatives is not None:
            columns_list.append(F.normalize(options.extra_negatives, dim=-1))
        candidates = torch.cat(columns_list) if len(columns_list) > 1 else all_p
        keys = self._cat_gathered(options.positive_keys, options.negative_keys, all_n is not None)
        groups = self._cat_gathered(options.positive_groups, options.negative_groups, all_n is not None)
        n_gathered = all_p.shape[0] + (all_n.shape[0] if all_n is not None else 0)
        return _Columns(q, all_q, all_p, all_n, offset, candidates, keys, groups, n_gathered), options

    def _scores(self, cols: _Columns, owners: Tensor | None, query_index: Tensor, m: int) -> tuple[Tensor, Tensor]:
        """Scaled cosines ``(B, C)`` (plus the hard-negative weight) and the targets (each query's positives)."""
        scores = cols.q @ cols.candidates.T * self.scale
        columns = torch.arange(cols.candidates.shape[0], device=cols.q.device)
        targets = (columns[None, :] // m == query_index[:, None]) & (columns[None, :] < cols.all_p.shape[0])
        if self.hard_negative_weight and cols.all_n is not None:
            own = self._own_negatives(owners, cols.offset // m, query_index, cols.all_p.shape[0],
                                      cols.all_n.shape[0], len(columns))
            scores = scores + own * self.hard_negative_weight
        return scores, targets

    def _exclusions(self, cols: _Columns, options: InfoNCEInputs, targets: Tensor, m: int) -> Tensor | None:
        """True where a candidate is masked: same key or group, excluded extra column, or reference false negative."""
        b = cols.q.shape[0]
        row_keys = options.positive_keys.view(b, m) if options.positive_keys is not None else None
        n = cols.n_gathered
        exclude = _exclusion_mask(row_keys, cols.keys, options.query_groups, cols.groups, targets[:, :n])
        exclude = self._extend(exclude, b, n, cols.candidates.shape[0], options.extra_exclude, cols.q.device)
        if options.reference is not None and self.false_negative_threshold is not None:
            false_negatives = self._reference_mask(options.reference, targets, n) & ~targets
            exclude = false_negatives if exclude is None else exclude | false_negatives
        return exclude

    def _result(self, cols: _Columns, options: InfoNCEInputs, scores: Tensor, targets: Tensor,
                exclude: Tensor | None, m: int, return_logits: bool) -> dict[str, Tensor]:
        """The loss (both directions when ``symmetric``), its parts, the accuracy and the temperature."""
        b, q_offset = cols.q.shape[0], cols.offset // m
        loss_q2c = self._multi_positive_ce(scores, targets, exclude)
        parts = {"loss_q2c": loss_q2c}
        loss = loss_q2c
        if self.symmetric:
            parts["loss_c2q"] = self._reverse_loss(cols.q, cols.all_q, cols.all_p[cols.offset: cols.offset + b * m],
                                                   q_offset, m, options.query_keys, options.query_groups)
            loss = (loss_q2c + parts["loss_c2q"]) / 2
        with torch.no_grad():
            masked = scores.masked_fill(exclude, float("-inf")) if exclude is not None else scores
            best = masked.argmax(1)
            accuracy = targets[torch.arange(b, device=cols.q.device), best].float().mean()
        out = {"loss": loss, **parts, "accuracy": accuracy, "temperature": (1.0 / self.scale).detach()}
        if return_logits:
            out["logits"] = masked.detach()
        return out

    def _reverse_loss(self, q: Tensor, all_q: Tensor | None, p_local: Tensor, q_offset: int, m: int,
                      query_keys: Tensor | None, query_groups: Tensor | None) -> Tensor:
        """The symmetric direction: each local positive against the queries of every process."""
        if all_q is None:
            all_q, q_offset = self._gather(q)
        rev_scores = p_local @ all_q.T * self.scale  # local positives against all queries
        owner = torch.arange(p_local.shape[0], device=q.device) // m + q_offset
        rev_targets = torch.arange(all_q.shape[0], device=q.device)[None, :] == owner[:, None]
        rev_exclude = None
        all_qk = self._gather(query_keys, grad=False)[0] if query_keys is not None else None
        all_qg = self._gather(query_groups, grad=False)[0] if query_groups is not None else None
        if all_qg is not None:
            rev_exclude = _exclusion_mask(None, None, query_groups.repeat_interleave(m), all_qg, rev_targets)
        if all_qk is not None and query_keys is not None:
            same = (query_keys.repeat_interleave(m)[:, None] == all_qk[None, :]) & ~rev_targets
            rev_exclude = same if rev_exclude is None else rev_exclude | same
        return self._multi_positive_ce(rev_scores, rev_targets, rev_exclude)

    @staticmethod
    def _owners(b: int, negatives: Tensor | None, negative_owners: Tensor | None) -> Tensor | None:
        """The local query index of each hard negative: ``negative_owners``, or ``k`` per query in row order."""
        if negatives is None:
            if negative_owners is not None and negative_owners.numel():
                raise ValueError("negative_owners given without hard negatives.")
            return None
        n = negatives.shape[0]
        if negative_owners is None:
            k = n // b
            if n != b * k or k < 1:
                raise ValueError(f"{n} hard negatives for {b} queries: give the same number per query, or "
                                 f"negative_owners (the query of each negative).")
            return torch.arange(n, device=negatives.device) // k
        owners = negative_owners.to(device=negatives.device, dtype=torch.long)
        if owners.shape != (n,) or (n and (int(owners.min()) < 0 or int(owners.max()) >= b)):
            raise ValueError(f"negative_owners has shape {tuple(owners.shape)}: give each of the {n} hard negatives "
                             f"the index of its query in [0, {b}).")
        return owners

    def _gather_negatives(self, n: Tensor | None, q: Tensor) -> Tensor | None:
        """The (normalised) hard negatives of every process, None when no process has any. A process whose rows
        have none still takes part (with an empty tensor), so the collective calls of all processes match."""
        if not (self.gather_across_devices and is_distributed()):
            return n
        counts = gather(torch.tensor([0 if n is None else n.shape[0]], device=q.device))
        if int(counts.sum()) == 0:
            return None
        if n is None:
            n = q.new_zeros((0, q.shape[1])).requires_grad_(q.requires_grad)
        return gather_with_grad(n)[0]

    def _own_negatives(self, owners: Tensor | None, q_offset: int, query_index: Tensor, n_positives: int,
                       n_negatives: int, n_columns: int) -> Tensor:
        """``(B, C)`` True where a candidate is one of the query's own hard negatives (any number per query)."""
        device = query_index.device
        local = owners + q_offset if owners is not None else torch.zeros(0, dtype=torch.long, device=device)
        all_owners = self._gather(local, grad=False)[0]
        own = torch.zeros(query_index.shape[0], n_columns, dtype=torch.bool, device=device)
        own[:, n_positives: n_positives + n_negatives] = all_owners[None, :] == query_index[:, None]
        return own

    def _transformed_views(self, queries: Tensor, positives: Tensor, negatives: Tensor | None
                           ) -> tuple[Tensor, Tensor, Tensor, int]:
        """Gather queries and positives, apply ``view_transform`` to the global views, normalise. Returns the local
        queries, all queries, all positives (row-major, ``m`` per query) and the positives' offset."""
        if negatives is not None:
            raise ValueError("view_transform works on queries and positives only; drop the hard negatives.")
        b, m = queries.shape[0], positives.shape[0] // queries.shape[0]
        all_q, q_offset = self._gather(queries)
        all_p, offset = self._gather(positives)
        views = [all_q] + [all_p.view(all_q.shape[0], m, -1)[:, j] for j in range(m)]
        views = [F.normalize(v, dim=-1) for v in self.view_transform(views)]
        all_q = views[0]
        all_p = torch.stack(views[1:], dim=1).reshape(all_q.shape[0] * m, -1)
        return all_q[q_offset: q_offset + b], all_q, all_p, offset

    @staticmethod
    def _extend(exclude: Tensor | None, b: int, n_gathered: int, n_columns: int, extra_exclude: Tensor | None,
                device: torch.device) -> Tensor | None:
        """The exclusion mask widened to the extra (queue / bank) columns."""
        if n_columns == n_gathered or (exclude is None and extra_exclude is None):
            return exclude
        left = exclude if exclude is not None else torch.zeros(b, n_gathered, dtype=torch.bool, device=device)
        right = (extra_exclude.to(device=device, dtype=torch.bool) if extra_exclude is not None
                 else torch.zeros(b, n_columns - n_gathered, dtype=torch.bool, device=device))
        if right.shape != (b, n_columns - n_gathered):
            raise ValueError(f"extra_exclude has shape {tuple(right.shape)}; expected {(b, n_columns - n_gathered)}.")
        return torch.cat([left, right], dim=1)

    def _reference_mask(self, reference: dict[str, Tensor], targets: Tensor, n_gathered: int) -> Tensor:
        """True where the frozen reference model scores a gathered candidate above the threshold (extra columns,
        which have no reference embedding, are never masked)."""
        with torch.no_grad():
            ref_q = F.normalize(reference["queries"].detach().float(), dim=-1)
            ref_p = self._gather(F.normalize(reference["positives"].detach().float(), dim=-1), grad=False)[0]
            blocks = [ref_p]
            if n_gathered > ref_p.shape[0]:  # some process has hard negatives (maybe not this one: then none here)
                negatives = reference.get("negatives")
                negatives = ref_q.new_zeros((0, ref_q.shape[1])) if negatives is None else negatives
                blocks.append(self._gather(F.normalize(negatives.detach().float(), dim=-1), grad=False)[0])
            ref_c = torch.cat(blocks)
            if ref_c.shape[0] != n_gathered:
                raise ValueError(f"reference embeddings give {ref_c.shape[0]} candidates, the batch {n_gathered}.")
            mask = torch.zeros_like(targets)
            mask[:, :n_gathered] = ref_q @ ref_c.T > self.false_negative_threshold
        return mask

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


class ContrastiveLoss(EmbeddingLoss):
    """An :class:`~mmembed.losses.base.EmbeddingLoss` with the :class:`InfoNCELoss` engine over the collator's columns.

    ``forward(anchor=..., positive=..., negative=...)`` takes the tokenized columns of
    :class:`~mmembed.data.collator.ContrastiveCollator`, embeds them (with gradient caching when ``mini_batch_size``
    or ``mini_batch_tokens`` is set, :mod:`mmembed.losses.gradcache`) and returns the loss and its logged parts; other
    batch keys (``negative_owners`` for rows with different numbers of hard negatives, groups) go to the engine.

    Args:
        model: the :class:`~mmembed.embedder.Embedder` to train.
        info_nce: the loss on embeddings (temperature, symmetric, gathering).
        mini_batch_size / mini_batch_tokens: gradient-caching mini-batches by count / padded tokens.
        mask_duplicates: identical inputs (same text and image) are not each other's negatives.
    """

    def __init__(self, model: nn.Module, info_nce: InfoNCELoss | None = None, mini_batch_size: int | None = None,
                 mini_batch_tokens: int | None = None, mask_duplicates: bool = True) -> None:
        super().__init__(model, mini_batch_size, mini_batch_tokens, mask_duplicates)
        self.info_nce = info_nce or InfoNCELoss()
        self._views_checked = False

    def embed_columns(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                      negative: dict[str, Tensor] | None = None
                      ) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor | None]]:
        """Embeddings of the columns and, with ``mask_duplicates``, their content keys for the engine."""
        q, p = self.embed(anchor), self.embed(positive)
        self.check_views(anchor, positive, q, p)
        n = self.embed(negative) if negative is not None else None
        return q, p, n, self.content_keys(anchor, positive, negative)

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None, **groups: Tensor) -> dict[str, Tensor]:
        q, p, n, keys = self.embed_columns(anchor, positive, negative)
        return self.info_nce(q, p, n, **keys, **groups)

    def check_views(self, anchor: dict[str, Tensor], positive: dict[str, Tensor], q: Tensor, p: Tensor) -> None:
        """Warn (once) when every positive is its anchor's own input and the two embeddings are identical:
        unsupervised SimCSE then has nothing to learn from (decoder LLMs ship with dropout 0)."""
        if self._views_checked or not self.training or not torch.equal(anchor["keys"], positive["keys"]):
            return
        self._views_checked = True
        if torch.allclose(q.detach(), p.detach(), rtol=0.0, atol=1e-6):
            warnings.warn("the two views of each sentence embed identically: the model has no active dropout, so "
                          "SimCSE-style self-positives teach nothing. Set lora_dropout > 0 (or another stochastic "
                          "view, e.g. method esimcse's word repetition).", stacklevel=2)
