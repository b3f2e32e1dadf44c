"""Distilled Sentence Embedding (DSE, Barkan et al. 2020): a bi-encoder student learns a teacher's pair scores.

DSE's objective is ``L = (1 - alpha) * L_task + alpha * ||s - z_teacher||^2`` with ``alpha = 0.5``
(``sentence_methods.md`` §6). As §6.4 recommends for a cosine-retrieval framework, the student's score here is the
similarity itself, ``s_i = cos(anchor_i, positive_i)``, with no head on top, so the distilled embeddings stay
usable with cosine. The distillation term is the mean over rows of ``(s_i - t_i)^2``.

Teacher scores are cosine-like targets: they must lie in ``[-1, 1]`` (an embedding teacher's cosine) or ``[0, 1]``
(a cross-encoder's sigmoid, an LLM judge's probability). Other scales (STS's 0-5, raw logits) must be mapped there
first; out-of-range values raise. Scores are computed once, before training, and cached
(:mod:`mmembed.data.teacher_scores`); the collator passes a row's ``teacher_score`` as ``teacher_scores``.

Task losses (``task``):

- ``"infonce"``: the contrastive engine (:class:`~mmembed.losses.contrastive.InfoNCELoss`) with in-batch
  negatives (and hard negatives when the rows have them): each row must be a positive pair.
- ``"cosine"``: ``mean((s_i - y_i)^2)`` against a gold score ``y_i`` (the row's ``score``, collated as ``scores``;
  same range as the teacher's), for graded pairs such as STS-B or SICK-R, where many rows are not positives.
- ``"cosent"``: CoSENT (Su 2022, the ranking loss AnglE and sentence-transformers' ``CoSENTLoss`` use):
  ``log(1 + sum over pairs with y_i > y_j of exp(scale * (s_j - s_i)))``, scale 20: only the order of the gold
  scores matters, which is what STS's Spearman measures.
- ``"none"``: distillation only (needs ``alpha = 1``; with ``alpha = 1`` any task is skipped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contrastive import ContrastiveLoss, InfoNCELoss

ALPHA = 0.5  # DSE's distillation_coeff
TASKS = ("infonce", "cosine", "cosent", "none")
COSENT_SCALE = 20.0
SCORE_RANGE = (-1.0, 1.0)
_TOLERANCE = 1e-3  # float32 cosines may pass 1 by a rounding error


def check_scores(values: Tensor, rows: int, name: str) -> Tensor:
    """``values`` as a float ``(rows,)`` tensor, checked finite and inside :data:`SCORE_RANGE`."""
    values = values.reshape(-1).float()
    if values.shape[0] != rows:
        raise ValueError(f"{values.shape[0]} {name} for {rows} rows: give one score per (anchor, positive) row.")
    low, high = SCORE_RANGE
    bad = ~torch.isfinite(values) | (values < low - _TOLERANCE) | (values > high + _TOLERANCE)
    if bad.any():
        value = float(values[bad.nonzero()[0, 0]])
        raise ValueError(f"{name} must be cosine-like scores in [{low:g}, {high:g}] (a cross-encoder's sigmoid gives "
                         f"[0, 1]), got {value:g}: rescale them first (e.g. an STS 0-5 score / 5).")
    return values


def cosent(cosine: Tensor, gold: Tensor, scale: float = COSENT_SCALE) -> Tensor:
    """CoSENT: ``log(1 + sum_{y_i > y_j} exp(scale * (s_j - s_i)))`` over the rows' cosines ``s`` and gold ``y``
    (0 when all gold scores are equal)."""
    differences = scale * (cosine[None, :] - cosine[:, None])  # [i, j] = scale * (s_j - s_i)
    ordered = gold[:, None] > gold[None, :]
    terms = torch.cat([differences.new_zeros(1), differences[ordered]])
    return torch.logsumexp(terms, dim=0)


class DistillationLoss(ContrastiveLoss):
    """DSE on cosines: ``(1 - alpha) * task + alpha * mean((cos(anchor, positive) - teacher)^2)``.

    ``forward(anchor, positive[, negative], teacher_scores=..., scores=...)`` takes the collator's columns and
    returns ``{"loss", "task", "distill", "student_cosine", "teacher_score"}`` plus the engine's parts with
    ``task="infonce"`` (``"task"`` is absent when the task is skipped, ``"distill"`` when ``alpha = 0`` and no
    teacher scores are given).

    Args:
        model: the :class:`~mmembed.embedder.Embedder` to train (the student).
        info_nce: the engine of ``task="infonce"`` (temperature, symmetric, gathering).
        alpha: weight of the distillation term, in [0, 1] (DSE: 0.5).
        task: ``"infonce"``, ``"cosine"`` or ``"none"`` (see the module's docstring).
        **kwargs: :class:`ContrastiveLoss`'s (gradient caching, ``mask_duplicates``).
    """

    def __init__(self, model: nn.Module, info_nce: InfoNCELoss | None = None, *, alpha: float = ALPHA,
                 task: str = "infonce", **kwargs) -> None:
        super().__init__(model, info_nce, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha}: the distillation weight must be in [0, 1] (DSE: 0.5).")
        if task not in TASKS:
            raise ValueError(f"task={task!r}: choose one of {TASKS}.")
        if task == "none" and alpha != 1.0:
            raise ValueError(f"task='none' trains on the teacher alone: set alpha=1 (got {alpha}), or pick a task.")
        self.alpha = float(alpha)
        self.task = task

    @property
    def uses_task(self) -> bool:
        """Whether the task loss is computed (``alpha < 1`` and a task)."""
        return self.alpha < 1.0 and self.task != "none"

    def forward(self, anchor: dict[str, Tensor], positive: dict[str, Tensor],
                negative: dict[str, Tensor] | None = None, *, teacher_scores: Tensor | None = None,
                scores: Tensor | None = None, **groups: Tensor) -> dict[str, Tensor]:
        if self.alpha > 0.0 and teacher_scores is None:
            raise ValueError("the distillation loss needs teacher scores: give every row a 'teacher_score' (see "
                             "mmembed.data.teacher_scores), or set alpha=0 for the task loss alone.")
        if self.uses_task and self.task in ("cosine", "cosent") and scores is None:
            raise ValueError(f"task={self.task!r} needs a gold 'score' on every row (in [-1, 1]); use task='infonce' "
                             "for positive pairs, or alpha=1 for distillation alone.")
        if self.uses_task and self.task == "infonce":
            q, p, n, keys = self.embed_columns(anchor, positive, negative)
        else:  # no in-batch negatives: the hard negatives (if any) are not embedded
            q, p, n, keys = self.embed(anchor), self.embed(positive), None, {}
        return self.from_embeddings(q, p, n, teacher_scores=teacher_scores, scores=scores, **keys, **groups)

    def from_embeddings(self, queries: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
                        teacher_scores: Tensor | None = None, scores: Tensor | None = None,
                        **engine_kwargs: Tensor | None) -> dict[str, Tensor]:
        """The loss of anchor embeddings ``(B, d)`` and their positives ``(B, d)`` (one per row); ``negatives`` and
        ``engine_kwargs`` (keys, groups) go to the engine with ``task="infonce"``."""
        b = queries.shape[0]
        if positives.shape[0] != b:
            raise ValueError(f"{positives.shape[0]} positives for {b} anchors: distillation scores one "
                             f"(anchor, positive) pair per row; give one positive per row.")
        cosine = F.cosine_similarity(queries.float(), positives.float(), dim=-1)
        out: dict[str, Tensor] = {}
        loss = cosine.new_zeros(())
        if self.uses_task:
            if self.task == "infonce":
                engine = self.info_nce(queries, positives, negatives, **engine_kwargs)
                task = engine.pop("loss")
                out.update(engine)
            else:
                gold = check_scores(scores.to(cosine.device), b, "scores")
                task = cosent(cosine, gold) if self.task == "cosent" else (cosine - gold).pow(2).mean()
            loss = loss + (1.0 - self.alpha) * task
            out["task"] = task.detach()
        if teacher_scores is not None:
            teacher = check_scores(teacher_scores.to(cosine.device), b, "teacher_scores")
            distill = (cosine - teacher).pow(2).mean()
            if self.alpha > 0.0:
                loss = loss + self.alpha * distill
            out["distill"] = distill.detach()
            out["teacher_score"] = teacher.mean().detach()
        out["student_cosine"] = cosine.mean().detach()
        return {"loss": loss, **out}
