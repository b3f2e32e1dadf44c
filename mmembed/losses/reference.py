"""MultiCSR's in-batch false-negative masking: a frozen reference model embeds the same batch, and candidates it
scores above the threshold (0.95) are masked with -inf (MultiCSR's code sets them to logit 0: a bug kept out).

The reference is the model as it was before training: under LoRA the same backbone with the adapter switched off
(no second copy in memory); without an adapter, a frozen copy made when the loss is built (meant for small
encoders). MultiCSR uses a frozen unsup-SimCSE model of the same backbone; pass a trained starting point as the
model to get that. The reference runs without dropout (MultiCSR leaves it in train mode: a project's choice).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from .. import lora
from .contrastive import ContrastiveLoss, InfoNCELoss

FALSE_NEGATIVE_THRESHOLD = 0.95  # MultiCSR's phi


class ReferenceMaskedLoss(ContrastiveLoss):
    """:class:`ContrastiveLoss` whose false negatives are found by a frozen reference model.

    The reference embeddings are the frozen full model's, whatever the width of the trained embeddings: a wrapper's
    repeated passes of one step (:class:`~mmembed.losses.elastic.ElasticLoss`'s sub-models) reuse the first pass's
    (the same rows, so the same false negatives) instead of running the reference again.
    """

    def __init__(self, model: nn.Module, info_nce: InfoNCELoss | None = None, **kwargs) -> None:
        info_nce = info_nce or InfoNCELoss(false_negative_threshold=FALSE_NEGATIVE_THRESHOLD)
        if info_nce.false_negative_threshold is None:
            raise ValueError("give the InfoNCELoss a false_negative_threshold (MultiCSR: 0.95).")
        super().__init__(model, info_nce, **kwargs)
        self._step_reference: dict[str, Tensor | None] | None = None
        self._frozen = [] if lora.has_adapter(model.backbone.model) else [copy.deepcopy(model).eval()]
        for p in (self._frozen[0].parameters() if self._frozen else ()):
            p.requires_grad_(False)

    @torch.no_grad()
    def reference_embed(self, batch: dict[str, Tensor]) -> Tensor:
        if self._frozen:
            reference = self._frozen[0].to(self.model.device)
            return reference(batch)[0]
        peft_model = self.model.backbone.model
        was_training = self.model.training
        self.model.eval()
        try:
            with peft_model.disable_adapter() if hasattr(peft_model, "disable_adapter") else nullcontext():
                return self.model(batch)[0]
        finally:
            self.model.train(was_training)

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None, **groups: Tensor) -> dict[str, Tensor]:
        q, p, n, keys = self.embed_columns(anchor, positive, negative)
        if self.repeat_pass and self._step_reference is not None:  # the same rows as the step's first pass
            reference = self._step_reference
        else:
            reference = {"queries": self.reference_embed(anchor), "positives": self.reference_embed(positive),
                         "negatives": self.reference_embed(negative) if negative is not None else None}
        self._step_reference = reference if self.in_shared_step else None
        return self.info_nce(q, p, n, **keys, **groups, reference=reference)
