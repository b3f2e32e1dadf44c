"""Evaluation metrics, written out so their tie handling is explicit.

Reference scripts of this field break ties toward the first candidate (``np.argmax``, ``argsort``); with the gold
candidate stored first, a collapsed model whose scores are all equal then scores 100%. Here ties never favour a
position: :func:`precision_at_1` gives the *expected* credit of a uniformly random tie-break (1/t when the gold is
among t tied best candidates) and :func:`rank` orders tied candidates by a seeded random key.

Ranked-list metrics (:func:`average_precision`, :func:`reciprocal_rank`, :func:`ndcg_at_k`, :func:`recall_at_k`,
:func:`hit_at_k`) take a ranking (candidate ids, best first) and the relevant ids (a set, or a dict of graded
relevance), as trec_eval does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

#: cosine scores closer than this count as tied (float noise of identical vectors is ~1e-7)
TIE_TOLERANCE = 1e-6

Relevant = Mapping[Hashable, float] | set | frozenset | Sequence[Hashable]


def spearman(predicted: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), x 100 as STS papers report it."""
    from scipy.stats import spearmanr

    predicted, gold = np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if predicted.shape != gold.shape or predicted.ndim != 1:
        raise ValueError(f"spearman: predicted {predicted.shape} and gold {gold.shape} must be equal 1-d shapes.")
    if len(gold) < 2:
        raise ValueError("spearman: needs at least 2 pairs.")
    if not np.isfinite(gold).all():
        raise ValueError("spearman: the gold scores hold NaN or infinity; fix or remove those pairs.")
    if np.ptp(predicted) == 0:  # constant predictions: no ranking information (scipy returns nan)
        return 0.0
    return float(spearmanr(predicted, gold).statistic * 100)


def precision_at_1(scores: Sequence[float] | np.ndarray, gold: int = 0, tolerance: float = TIE_TOLERANCE) -> float:
    """Precision@1 (= hit@1 with one gold candidate) under a uniformly random tie-break, in expectation.

    1 if ``scores[gold]`` is the unique best, 1/t if it is one of t candidates within ``tolerance`` of the best,
    else 0. A model whose scores are all equal gets 1/len(scores) (chance), whatever position the gold has.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"precision_at_1: scores must be a non-empty 1-d array, got shape {scores.shape}.")
    if np.isnan(scores).any():
        return 0.0
    best = scores.max()
    if scores[gold] < best - tolerance:
        return 0.0
    return 1.0 / int((scores >= best - tolerance).sum())


def gold_rank_range(scores: Sequence[float] | np.ndarray, gold: int = 0,
                    tolerance: float = TIE_TOLERANCE) -> tuple[int, int]:
    """The ranks (1-based) the gold candidate can take under a random tie-break: ``(b + 1, b + t)`` with ``b``
    candidates strictly better and ``t`` tied with it (itself included); each rank in between is equally likely."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores[gold]):
        return len(scores), len(scores)
    better = int((scores > scores[gold] + tolerance).sum())
    tied = int((np.abs(scores - scores[gold]) <= tolerance).sum())
    return better + 1, better + tied


def single_gold_metric(scores: Sequence[float] | np.ndarray, metric: str, gold: int = 0,
                       tolerance: float = TIE_TOLERANCE) -> float:
    """A per-query metric with one relevant candidate, in expectation over random tie-breaks: ``precision@1``,
    ``hit@k`` (= recall@k), ``ndcg@k`` (1 / log2(rank + 1) within the top k) or ``mrr`` (1 / rank)."""
    first, last = gold_rank_range(scores, gold, tolerance)
    name, _, k = metric.partition("@")
    if name == "precision" and k == "1":
        name, k = "hit", "1"
    values = {"hit": lambda r: float(r <= int(k)), "ndcg": lambda r: float(r <= int(k)) / np.log2(r + 1),
              "mrr": lambda r: 1.0 / r}
    if name not in values or (name != "mrr" and not k.isdigit()):
        raise ValueError(f"unknown metric {metric!r}: use precision@1, hit@k, ndcg@k or mrr.")
    return float(np.mean([values[name](r) for r in range(first, last + 1)]))


def rank(scores: Sequence[float] | np.ndarray, rng: np.random.Generator | int | None = 0,
         depth: int | None = None, decimals: int = 6) -> np.ndarray:
    """Candidate indices by decreasing score; scores equal at ``decimals`` are ordered by a seeded random key."""
    scores = np.asarray(scores, dtype=np.float64)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    order = np.lexsort((rng.random(len(scores)), -np.round(scores, decimals)))
    return order[:depth] if depth is not None else order


def _gains(relevant: Relevant) -> dict:
    if isinstance(relevant, Mapping):
        return {k: float(v) for k, v in relevant.items() if v > 0}
    return {k: 1.0 for k in relevant}


def average_precision(ranking: Sequence[Hashable], relevant: Relevant) -> float:
    """AP: mean over the relevant items of precision at their rank (unretrieved relevant items count 0)."""
    gains = _gains(relevant)
    if not gains:
        return 0.0
    hits, total = 0, 0.0
    for position, item in enumerate(ranking, start=1):
        if item in gains:
            hits += 1
            total += hits / position
    return total / len(gains)


def reciprocal_rank(ranking: Sequence[Hashable], relevant: Relevant, k: int | None = None) -> float:
    """1 / rank of the first relevant item within the top ``k`` (0 when there is none): MRR@k per query."""
    gains = _gains(relevant)
    for position, item in enumerate(ranking[:k] if k is not None else ranking, start=1):
        if item in gains:
            return 1.0 / position
    return 0.0


def ndcg_at_k(ranking: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    """nDCG@k with linear gains (trec_eval ``ndcg_cut``): sum rel_i / log2(i + 1) over the top k, normalised by
    the ideal ordering of the judged relevant items."""
    gains = _gains(relevant)
    if not gains:
        return 0.0
    dcg = sum(gains.get(item, 0.0) / np.log2(i + 2) for i, item in enumerate(ranking[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg)


def recall_at_k(ranking: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    """Fraction of the relevant items found in the top ``k`` (BEIR / MTEB recall)."""
    gains = _gains(relevant)
    if not gains:
        return 0.0
    return len(set(ranking[:k]) & set(gains)) / len(gains)


def hit_at_k(ranking: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    """1 if any relevant item is in the top ``k``. M-BEIR's "Recall@k" is this (UniIR ``compute_recall_at_k``)."""
    gains = _gains(relevant)
    return float(any(item in gains for item in ranking[:k]))


def mean(values: Sequence[float]) -> float | None:
    """Unweighted mean; ``None`` for no values (a missing task is never averaged in as 0)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
