"""GRACE rewards: contrastive similarities of rationale embeddings, for TRL's ``GRPOTrainer``.

Each completion (a rationale for the policy text) is embedded by the *current* policy: mean of the last hidden layer
over prompt + rationale, leaving out the system-prompt prefix, L2-normalised. For a completion ``i`` of group ``g``
(the ``num_generations`` rollouts of one prompt), with ``m`` its embedding, ``q`` the query's and ``n`` the negative's::

    positive      cos(q_i, m_i)
    negative      -cos(m_i, n_i)                                     (supervised data only)
    clustering    mean over j in g, j != i of cos(m_i, m_j)          (in-group consistency)
    cross_group   -mean over other groups g' of cos(m_i, q_g')       (other prompts' queries are negatives)
    reward        (positive + w_n * negative + w_c * clustering + w_x * cross_group) / tau
                  - w_r * rouge_l - w_s * max(0, L - length) / L            (both terms off by default, as GRACE)
                  or ``truncation_reward`` (-1) for a rationale cut at the length limit without an end token
                  (with ``truncation_penalty`` p set: that rationale's own reward - p, a soft limit, not a cliff)

``rouge_l`` is the rationale's ROUGE-L F1 with the policy text (:func:`mmembed.rationale.rouge_l`), weighted by
``restatement_weight`` (w_r); ``length`` is its number of tokens, ``min_rationale_tokens`` L and ``short_weight`` w_s.
With GRACE's -1 cliff and mean pooling over text + rationale, a small policy on a short run learns to echo its input
or write two words (the shortest answer is never cut and embeds closest to the input); these terms keep rationales.
The reward logs ``rouge_l`` and ``restatement``, the share of rationales with ROUGE-L >= 0.6.

**The cancellation fix.** GRACE's code computes its negative term as -cos(q_g, n_g) and its cross-group term from the
group's query, the same value for every rollout of a group: GRPO subtracts the group mean, so both vanish from the
advantages (GRACE issue #4). Here both terms use the rollout's own embedding ``m_i``, so they differ within a group
and steer the policy. Group terms see whole groups even when TRL spreads one over several processes: embeddings and
group ids are gathered first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..inputs import to_items
from ..parallel import is_zero3
from ..rationale import RESTATEMENT_THRESHOLD, rouge_l, stop_token_ids

TERMS = ("positive", "negative", "clustering", "cross_group")


@dataclass
class GraceRewardConfig:
    """Weights and temperature of the GRACE reward (GRACE's run: tau 0.1, clustering and cross-group 0.2)."""

    temperature: float = 0.1
    negative_weight: float = 1.0
    clustering_weight: float = 0.2
    cross_group_weight: float = 0.2
    truncation_reward: float = -1.0
    truncation_penalty: float | None = None  # set: a cut rationale keeps its reward minus this (soft limit)
    restatement_weight: float = 0.0  # reward -= weight * ROUGE-L(rationale, input)
    min_rationale_tokens: int = 0  # > 0: reward -= short_weight * (its shortfall / this) for a shorter rationale
    short_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"GraceRewardConfig.temperature={self.temperature}; it must be positive.")
        if self.truncation_penalty is not None and self.truncation_penalty < 0:
            raise ValueError(f"GraceRewardConfig.truncation_penalty={self.truncation_penalty}; it must be >= 0.")
        if self.restatement_weight < 0:
            raise ValueError(f"GraceRewardConfig.restatement_weight={self.restatement_weight}; it must be >= 0.")
        if self.min_rationale_tokens < 0 or self.short_weight < 0:
            raise ValueError(f"GraceRewardConfig: min_rationale_tokens={self.min_rationale_tokens} and short_weight="
                             f"{self.short_weight} must be >= 0.")


def grace_rewards(main: Tensor, query: Tensor, groups: Tensor, negative: Tensor | None = None,
                  truncated: Tensor | None = None, config: GraceRewardConfig | None = None,
                  overlap: Tensor | None = None, lengths: Tensor | None = None) -> dict[str, Tensor]:
    """The reward of each completion and its terms (see the module docstring); embeddings are L2-normalised here.

    Args:
        main: ``(n, d)`` rationale embeddings (prompt + rationale) of the completions.
        query: ``(n, d)`` the query embedding of each completion's row (equal within a group).
        groups: ``(n,)`` group id (the prompt's row) of each completion.
        negative: ``(n, d)`` the negative's embedding of each completion's row, or None (unsupervised).
        truncated: ``(n,)`` True where the rationale hit the length limit without an end token.
        overlap: ``(n,)`` each rationale's ROUGE-L with its input (needed when ``restatement_weight`` > 0).
        lengths: ``(n,)`` each rationale's number of tokens (needed when ``min_rationale_tokens`` > 0).
    """
    config = config or GraceRewardConfig()
    main, query = F.normalize(main.float(), dim=-1), F.normalize(query.float(), dim=-1)
    positive = (main * query).sum(-1)
    same = groups[:, None] == groups[None, :]
    others = same & ~torch.eye(len(groups), dtype=torch.bool, device=main.device)
    clustering = ((main @ main.T) * others).sum(1) / others.sum(1).clamp(min=1)
    ids, index = torch.unique(groups, return_inverse=True)
    group_query = F.normalize(torch.zeros(len(ids), main.shape[1], device=main.device).index_add_(0, index, query),
                              dim=-1)
    other_groups = index[:, None] != torch.arange(len(ids), device=main.device)[None, :]
    cross_group = -((main @ group_query.T) * other_groups).sum(1) / other_groups.sum(1).clamp(min=1)
    if negative is not None:
        negative_term = -(main * F.normalize(negative.float(), dim=-1)).sum(-1)
    else:
        negative_term = torch.zeros_like(positive)
    reward = (positive + config.negative_weight * negative_term + config.clustering_weight * clustering
              + config.cross_group_weight * cross_group) / config.temperature
    if config.restatement_weight > 0:
        if overlap is None:
            raise ValueError("restatement_weight > 0 needs each rationale's overlap with its input (overlap=...).")
        reward = reward - config.restatement_weight * overlap.to(reward)
    if config.min_rationale_tokens > 0:
        if lengths is None:
            raise ValueError("min_rationale_tokens > 0 needs each rationale's length in tokens (lengths=...).")
        shortfall = (config.min_rationale_tokens - lengths.to(reward)).clamp(min=0) / config.min_rationale_tokens
        reward = reward - config.short_weight * shortfall
    if truncated is not None:
        cut = reward - config.truncation_penalty if config.truncation_penalty is not None else \
            torch.full_like(reward, config.truncation_reward)
        reward = torch.where(truncated.to(main.device), cut, reward)
    return {"reward": reward, "positive": positive, "negative": negative_term, "clustering": clustering,
            "cross_group": cross_group}


def group_advantages(rewards: Tensor, groups: Tensor) -> Tensor:
    """GRPO advantages without std scaling (GRACE, Dr. GRPO): each reward minus its group's mean."""
    ids, index = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=rewards.dtype, device=rewards.device).index_add_(0, index, rewards)
    counts = torch.zeros(len(ids), dtype=rewards.dtype, device=rewards.device).index_add_(
        0, index, torch.ones_like(rewards))
    return rewards - (sums / counts)[index]


class GraceReward:
    """A TRL reward function that embeds completions with the current policy (an :class:`~mmembed.Embedder` whose
    backbone model *is* the policy, LoRA included) and returns :func:`grace_rewards`.

    Dataset columns it reads: ``text`` (the policy text the prompt was rendered from), ``group`` (the row's index),
    ``query`` and optionally ``negative``. Set ``reward.trainer = trainer`` after building the trainer (for
    gathering across processes and the DeepSpeed ZeRO-3 lockstep).

    Args:
        embedder: the embedder in rationale mode (mean pooling without the system prompt).
        config: weights and temperature.
        max_completion_length: the rollouts' length limit (for the truncation penalty).
        query_rationale: embed query and negative with a greedy rationale of the current policy (as the trained
            model encodes them); False embeds their text alone (cheaper).
        batch_size: sequences per no-grad forward.
    """

    __name__ = "grace"

    def __init__(self, embedder, config: GraceRewardConfig, max_completion_length: int, *,
                 query_rationale: bool = True, batch_size: int = 16) -> None:
        if embedder.rationale is None and query_rationale:
            raise ValueError("query_rationale=True needs an embedder in rationale mode (Embedder(rationale=...)).")
        self.embedder = embedder
        self.config = config
        self.max_completion_length = max_completion_length
        self.query_rationale = query_rationale
        self.batch_size = batch_size
        self.trainer = None
        self.history: list[dict[str, float]] = []  # per call: mean reward and terms over the global batch
        self.seconds = 0.0  # time spent in calls

    # -------------------------------------------------------------------------------------------- distribution
    @property
    def _accelerator(self):
        return self.trainer.accelerator if self.trainer is not None else None

    def _lockstep(self) -> bool:
        """DeepSpeed ZeRO-3 shards the weights: every process must run the same number of forwards."""
        return self.trainer is not None and is_zero3(self.trainer)

    def _max_over_processes(self, value: int) -> int:
        if not self._lockstep():
            return value
        return int(self._accelerator.gather(torch.tensor([value], device=self._accelerator.device)).max())

    def _gather(self, tensor: Tensor) -> Tensor:
        accelerator = self._accelerator
        return accelerator.gather(tensor.to(accelerator.device)).cpu() if accelerator is not None else tensor

    # -------------------------------------------------------------------------------------------- embedding
    def render(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of the rendered prompts (system prompt, user text, generation prompt) and their prefix
        lengths (the system-prompt part that pooling leaves out)."""
        backbone = self.embedder.backbone
        rendered = [backbone.renderer.render(item) for item in to_items([{"text": t} for t in texts])[0]]
        ids = backbone.tokenize_texts([r.text for r in rendered])
        return ids, [backbone.prefix_length(i, r.prefix) for i, r in zip(ids, rendered)]

    @torch.no_grad()
    def embed(self, ids: Sequence[list[int]], prefix_lengths: Sequence[int]) -> Tensor:
        """Pooled, normalised embeddings of token sequences by the current weights (eval mode: no dropout)."""
        embedder = self.embedder
        chunks = list(range(0, len(ids), self.batch_size))
        n_calls = self._max_over_processes(len(chunks))
        out = []
        training = embedder.training
        embedder.eval()
        try:
            for k in range(max(n_calls, len(chunks))):
                start = chunks[k] if k < len(chunks) else 0  # extra calls repeat a chunk (lockstep)
                batch = embedder.backbone.pad([list(x) for x in ids[start:start + self.batch_size]])
                batch["prefix_lengths"] = torch.tensor(list(prefix_lengths[start:start + self.batch_size]))
                vectors, _ = embedder(batch)
                if k < len(chunks):
                    out.append(vectors.float().cpu())
        finally:
            embedder.train(training)
        return torch.cat(out) if out else torch.empty(0, embedder.backbone.hidden_size)

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """Embeddings of the distinct ``texts`` (query / negative), each with its greedy rationale when
        ``query_rationale``; returned in the order of ``texts``."""
        unique = list(dict.fromkeys(texts))
        ids, prefix = self.render(unique)
        if self.query_rationale:
            calls = self._max_over_processes(-(-len(ids) // self.embedder.rationale.batch_size))
            rationales = self.embedder.add_rationales(ids, use_cache=False, synced_gpus=self._lockstep(),
                                                      min_batches=calls)
            ids = [i + r for i, r in zip(ids, rationales)]
        vectors = self.embed(ids, prefix)
        where = {t: k for k, t in enumerate(unique)}
        return vectors[[where[t] for t in texts]]

    # -------------------------------------------------------------------------------------------- TRL entry
    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]], text: list[str],
                 group: list[int], query: list[str], negative: list[str] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_: object) -> list[float]:
        start = time.perf_counter()
        ids, prefix = self.render(text)
        main = self.embed([p + list(c) for p, c in zip(ids, completion_ids)], prefix)
        stops = set(stop_token_ids(self.embedder.backbone.model, self.embedder.backbone.tokenizer))
        truncated = torch.tensor([len(c) >= self.max_completion_length and (not c or c[-1] not in stops)
                                  for c in completion_ids])
        others = self.embed_texts(list(query) + list(negative or []))  # one batched generation for both
        query_vectors = others[:len(query)]
        negative_vectors = others[len(query):] if negative is not None else None
        local = len(completion_ids)
        tokenizer = self.embedder.backbone.tokenizer
        overlap = torch.tensor([rouge_l(tokenizer.decode(c, skip_special_tokens=True), t)
                                for c, t in zip(completion_ids, text)])
        gathered = {
            "main": self._gather(main), "query": self._gather(query_vectors),
            "groups": self._gather(torch.tensor(group, dtype=torch.long)), "truncated": self._gather(truncated),
            "rouge_l": self._gather(overlap), "lengths": self._gather(torch.tensor([len(c) for c in completion_ids])),
        }
        if negative_vectors is not None:
            gathered["negative"] = self._gather(negative_vectors)
        terms = grace_rewards(gathered["main"], gathered["query"], gathered["groups"], gathered.get("negative"),
                              gathered["truncated"], self.config, gathered["rouge_l"],
                              gathered["lengths"])
        summary = {name: float(terms[name].mean()) for name in ("reward", *TERMS)}
        summary["truncated"] = float(gathered["truncated"].float().mean())
        summary["rouge_l"] = float(gathered["rouge_l"].mean())  # rationale vs its input: restating, not explaining
        summary["restatement"] = float((gathered["rouge_l"] >= RESTATEMENT_THRESHOLD).float().mean())
        self.history.append(summary)
        if log_metric is not None:
            for name, value in summary.items():
                if name != "reward":
                    log_metric(f"grace/{name}", value)
        rank = self._accelerator.process_index if self._accelerator is not None else 0
        self.seconds += time.perf_counter() - start
        return terms["reward"][rank * local:(rank + 1) * local].tolist()

