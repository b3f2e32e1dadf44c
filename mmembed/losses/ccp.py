"""CCP (contrastive context prediction): symmetric InfoNCE between a sentence and a neighbour in its document, with
negatives from a memory bank of the query's own group (language or source) and batch normalisation on one side.

What follows the paper (Wu et al., IJCAI 2022; no pre-training code is public): context sentences as positives, a
symmetric loss, a language-specific memory bank against the language-identity shortcut, asymmetric batch
normalisation against information leakage through batch statistics. This project's choices (``[unverified]`` in
``sentence_methods.md`` §10): the normalisation is applied to the positive (context) side only, without learned
scale or shift, with the statistics of the gathered batch, and only in training; the bank holds the positives'
embeddings of earlier steps (detached, normalised with their own process's batch statistics), one FIFO per group.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .contrastive import ContrastiveLoss, InfoNCELoss
from .negatives import GroupedMemoryBank


class OneSidedBatchNorm(nn.Module):
    """A ``view_transform`` that batch-normalises every positive view (per channel, over the batch) and leaves the
    queries as they are."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        return [views[0]] + [F.batch_norm(v, None, None, training=True, eps=self.eps) for v in views[1:]]


class MemoryBankContrastiveLoss(ContrastiveLoss):
    """:class:`ContrastiveLoss` with CCP's per-group memory banks as extra negatives.

    Rows carry ``bank_group`` (0 .. ``num_groups`` - 1), collated into ``bank_groups``. Each step the loss is computed
    against the banks as they were, then the step's positives enter their groups' banks. The banks hold the full
    model's embeddings: a pass on narrower embeddings (a sub-model of :class:`~mmembed.losses.elastic.ElasticLoss`)
    reads their first dimensions, and only the step's first pass writes (through
    :meth:`~mmembed.losses.base.EmbeddingLoss.write_state`).
    """

    def __init__(self, model: nn.Module, info_nce: InfoNCELoss | None = None, *, num_groups: int, bank_size: int,
                 **kwargs) -> None:
        super().__init__(model, info_nce, **kwargs)
        self.bank = GroupedMemoryBank(num_groups, bank_size, model.embedding_dim)

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None, bank_groups: Tensor | None = None,
                **groups: Tensor) -> dict[str, Tensor]:
        if bank_groups is None:
            raise ValueError("memory-bank training needs a bank_group on every row (e.g. its language id).")
        q, p, n, keys = self.embed_columns(anchor, positive, negative)
        bank_rows, bank_exclude = self.bank.negatives(bank_groups)  # full width, cut to this pass's width
        out = self.info_nce(q, p, n, **keys, **groups,
                            extra_negatives=bank_rows[:, :q.shape[1]].to(q) if bank_rows is not None else None,
                            extra_exclude=bank_exclude)
        if self.updates_state:  # bank rows as the loss saw this step's positives (after the one-sided normalisation)
            rows = p.detach()
            if self.info_nce.view_transform is not None:
                rows = self.info_nce.view_transform([q.detach(), rows])[1]
            rows = F.normalize(rows, dim=-1)
            self.write_state(lambda: self.bank.push(rows, bank_groups))
        return out
