"""MuCo's losses on packed multi-turn batches (:mod:`mmembed.data.multiturn`).

:class:`MultiTurnContrastiveLoss` (pretraining): every ``<|emb|>`` of a query conversation is a query, the
``<|emb|>`` of the same turn in the target conversation its positive, and all other targets of the global batch its
negatives, except the other turns of its own conversation (``group`` mask: they would be false negatives). With one
turn a conversation this is exactly single-turn InfoNCE. Gradient caching slices packed batches per conversation, so
large batches of packs fit in the memory of a mini-batch.

:class:`AuxiliaryContrastiveLoss` (fine-tuning): two embeddings per conversation, the base ``q`` / ``p`` (first
``<|emb|>``) and the auxiliary ``q~`` / ``p~`` (second, after the masked rewrite turn); the loss is MuCo's four
InfoNCE terms ``q.[P;N] + q.[P~;N] + q~.[P;N] + q~.[P~;N]`` over the gathered batch with shared hard negatives.
"""

from __future__ import annotations

from torch import Tensor

from .contrastive import ContrastiveLoss


class MultiTurnContrastiveLoss(ContrastiveLoss):
    """InfoNCE over the turns of packed conversations, same-conversation turns masked (MuCo pretraining)."""

    def embed_turns(self, batch: dict[str, Tensor], turns: Tensor, side: str) -> Tensor:
        """One embedding per ``<|emb|>``, checked against the number of turns the collator packed."""
        vectors, counts = self.embed_with_counts(batch)
        if counts.shape != turns.shape or bool((counts.to(turns.device) != turns).any()):
            bad = int((counts.to(turns.device) != turns).nonzero()[0]) if counts.shape == turns.shape else 0
            raise ValueError(f"{side} conversation {bad} has {int(counts[bad])} embedding tokens but "
                             f"{int(turns[bad])} turns were packed: it was truncated (raise max_length) or its text "
                             f"holds the token.")
        return vectors

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor], turns: Tensor,
                query_groups: Tensor, positive_groups: Tensor, query_keys: Tensor | None = None,
                positive_keys: Tensor | None = None, negative: dict[str, Tensor] | None = None,
                negative_groups: Tensor | None = None, negative_keys: Tensor | None = None) -> dict[str, Tensor]:
        q = self.embed_turns(anchor, turns, "query")
        p = self.embed_turns(positive, turns, "target")
        n = self.embed(negative) if negative is not None else None
        keys = self.content_keys(query_keys, positive_keys, negative_keys)
        return self.info_nce(q, p, n, query_groups=query_groups, positive_groups=positive_groups,
                             negative_groups=negative_groups if n is not None else None, **keys)


class AuxiliaryContrastiveLoss(ContrastiveLoss):
    """MuCo fine-tuning: the four InfoNCE terms of base and auxiliary embeddings (summed, as MuCo does)."""

    def _pair(self, batch: dict[str, Tensor], side: str) -> tuple[Tensor, Tensor]:
        vectors, counts = self.embed_with_counts(batch)
        if bool((counts != 2).any()):
            raise ValueError(f"every {side} conversation needs exactly 2 embedding tokens (base and auxiliary); "
                             f"got {counts.tolist()}: truncated (raise max_length) or the token is in the text.")
        return vectors[0::2], vectors[1::2]

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None,
                query_keys: Tensor | None = None, positive_keys: Tensor | None = None,
                negative_keys: Tensor | None = None, negative_owners: Tensor | None = None) -> dict[str, Tensor]:
        q, q_aux = self._pair(anchor, "query")
        p, p_aux = self._pair(positive, "positive")
        n = self.embed(negative) if negative is not None else None
        keys = self.content_keys(query_keys, positive_keys, negative_keys)
        terms = {"q_p": (q, p), "q_paux": (q, p_aux), "qaux_p": (q_aux, p), "qaux_paux": (q_aux, p_aux)}
        out: dict[str, Tensor] = {}
        for name, (queries, targets) in terms.items():
            result = self.info_nce(queries, targets, n, negative_owners=negative_owners, **keys)
            out[f"loss_{name}"] = result["loss"]
            out.setdefault("accuracy", result["accuracy"])  # of the base embeddings, what evaluation uses
            out.setdefault("temperature", result["temperature"])
        out["loss"] = sum(out[f"loss_{name}"] for name in terms)
        return out
