"""SimCTG (Su et al., NeurIPS 2022): a token-level contrastive term that spreads a causal LM's token states apart.

``L = L_MLE + L_CL`` with ``L_CL`` the mean, over ordered pairs ``i != j`` of real tokens of the same sequence, of
``max(0, margin - 1 + cos(h_i, h_j))`` on last-layer states (margin 0 gives plain MLE). :func:`isotropy` is the
measure of "Contrastive Search Is What You Need" (Su & Collier, TMLR 2023): one minus the mean intra-sequence cosine
similarity of token states, pooled over every pair of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair_similarities(hidden: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Cosine similarities ``(B, T, T)`` of each sequence's token states and the mask of valid ordered pairs."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden has shape {tuple(hidden.shape)}; pass token states of shape (batch, tokens, dim).")
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, hidden {tuple(hidden.shape)}; "
                         f"pass one mask value per token (batch, tokens).")
    unit = F.normalize(hidden, dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    real = attention_mask.bool()
    eye = torch.eye(hidden.shape[1], dtype=torch.bool, device=hidden.device)
    return similarity, real[:, :, None] & real[:, None, :] & ~eye


def token_contrastive_loss(hidden: Tensor, attention_mask: Tensor | None = None, margin: float = 0.5) -> Tensor:
    """SimCTG's ``L_CL``: mean over valid ordered pairs (``i != j``, both real tokens, same sequence) of
    ``max(0, margin - 1 + cos(h_i, h_j))``; zero (keeping the graph) when no sequence has two real tokens."""
    if margin < 0:
        raise ValueError(f"margin={margin}; it must be at least 0 (0 turns the term off, SimCTG uses 0.5).")
    similarity, valid = _pair_similarities(hidden, attention_mask)
    terms = (margin - 1 + similarity).clamp(min=0) * valid
    return terms.sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def isotropy(hidden: Tensor, attention_mask: Tensor | None = None) -> float:
    """``1 - sum cos(h_i, h_j) / #pairs`` over ordered pairs ``i != j`` of real tokens of the same sequence, pooled
    over the whole batch (float64). Stack a corpus into one padded batch, or pool its pair sums, to measure it."""
    similarity, valid = _pair_similarities(hidden.double(), attention_mask)
    pairs = int(valid.sum())
    if pairs == 0:
        raise ValueError("isotropy needs at least one sequence with two real tokens; the attention_mask has none.")
    return 1.0 - float((similarity * valid).sum()) / pairs


class SimCTGLoss(nn.Module):
    """A causal LM (may carry a PEFT adapter) trained with ``L_MLE + L_CL``; usable as a ``Trainer`` model.

    ``forward`` returns ``{"loss", "mle", "cl"}``: ``mle`` is the LM's own shifted cross-entropy (``labels`` default
    to ``input_ids`` with padding set to -100) and ``cl`` is :func:`token_contrastive_loss` on the last-layer states.
    """

    def __init__(self, model: nn.Module, margin: float = 0.5) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin={margin}; it must be at least 0 (0 is plain MLE, SimCTG uses 0.5).")
        self.model = model
        self.margin = margin

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
                ) -> dict[str, Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is None:
            labels = input_ids.masked_fill(attention_mask == 0, -100)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                         output_hidden_states=True, use_cache=False)
        cl = token_contrastive_loss(out.hidden_states[-1], attention_mask, self.margin)
        return {"loss": out.loss + cl, "mle": out.loss, "cl": cl}
