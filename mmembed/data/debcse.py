"""DebCSE: positives and hard negatives chosen by inverse-propensity weighting (IPW) of surface similarity.

**What follows the paper** (Miao, Du, Zhang, CIKM 2023; only its abstract is public, no code exists): the rules that
build unsupervised contrastive pairs carry biases (sentence length, lexical overlap, false negatives); DebCSE
corrects them by sampling positive and negative pairs with inverse-propensity weights computed from both the
*surface* and the *semantic* similarity of two sentences, so the training pairs look like supervised data.

**What is this project's choice** (a reconstruction, ``sentence_methods.md`` §3.2; change it when the paper's
equations are known):

- surface similarity ``sigma_s``: Jaccard overlap of the lower-cased word sets, in ``bins`` equal-width bins on
  [0, 1]; semantic similarity ``sigma_m``: cosine under a frozen reference encoder;
- positive candidates of an anchor: its ``k`` nearest sentences by ``sigma_m``, kept when
  ``sigma_m >= positive_min``; hard-negative candidates: its ``k`` nearest sentences by ``sigma_s`` (lexically
  close), kept when ``sigma_m <= negative_max`` (so a lexical near-copy that means something else is the hard
  negative, and no paraphrase above ``negative_max`` is ever a negative);
- propensity of a pair = the share of its surface bin among the candidate pairs of its kind (all positives, or all
  negatives, of the corpus); weight = 1 / propensity, normalised to mean 1 over those pairs. Sampling by weight
  makes the chosen pairs' surface similarity uniform over bins: lexical overlap no longer tells a positive from a
  negative;
- each anchor gets one positive and one hard negative drawn by weight (seeded); an anchor without a positive
  candidate is its own positive (SimCSE's dropout view), one without a negative candidate gets none (rows without
  a negative are returned separately so a batch never mixes the two).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .rows import Row, row, side, text_row

_WORD = re.compile(r"\w+")


def surface_similarity(a: str, b: str) -> float:
    """Jaccard overlap of the lower-cased word sets of ``a`` and ``b`` (1.0 for two empty texts)."""
    x, y = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    return 1.0 if not x and not y else len(x & y) / len(x | y)


def surface_bins(similarity: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each similarity in [0, 1] (1.0 falls in the last bin)."""
    return np.minimum((np.asarray(similarity) * bins).astype(int), bins - 1)


def ipw_weights(similarity: np.ndarray, bins: int) -> np.ndarray:
    """Inverse-propensity weights of pairs by surface bin: ``1 / share(bin)``, normalised to mean 1."""
    b = surface_bins(similarity, bins)
    if b.size == 0:
        return np.zeros(0)
    share = np.bincount(b, minlength=bins) / b.size
    w = 1.0 / share[b]
    return w / w.mean()


@dataclass(frozen=True)
class IPWConfig:
    """DebCSE sampling settings (this project's defaults, see the module docstring)."""

    k: int = 16
    positive_min: float = 0.75
    negative_max: float = 0.45
    bins: int = 5
    seed: int = 0


def _word_sets(sentences: Sequence[str]) -> list[set[str]]:
    return [set(_WORD.findall(s.lower())) for s in sentences]


def surface_neighbours(sentences: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
    """For each sentence, the ``k`` others with the highest word overlap (Jaccard > 0), through an inverted index."""
    words = _word_sets(sentences)
    index: dict[str, list[int]] = {}
    for i, ws in enumerate(words):
        for w in ws:
            index.setdefault(w, []).append(i)
    out = []
    for i, ws in enumerate(words):
        shared = Counter(j for w in ws for j in index[w] if j != i)
        scored = [(j, c / len(ws | words[j])) for j, c in shared.items()]
        out.append(sorted(scored, key=lambda x: (-x[1], x[0]))[:k])
    return out


def select_pairs(sentences: Sequence[str], embeddings: np.ndarray, config: IPWConfig | None = None
                 ) -> tuple[list[Row], list[Row]]:
    """``(triplets, pairs)``: a positive and a hard negative per anchor, drawn by IPW weight; anchors without a
    negative candidate come back as pairs. ``embeddings`` are the reference encoder's, one row per sentence."""
    config = config or IPWConfig()
    n = len(sentences)
    if embeddings.shape[0] != n:
        raise ValueError(f"{embeddings.shape[0]} embeddings for {n} sentences.")
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    k = min(config.k, n - 1)
    neighbours = np.argsort(-sims, axis=1)[:, :k]
    candidates: dict[str, list[tuple[int, int, float]]] = {"positive": [], "negative": []}
    for i in range(n):  # (anchor, candidate, surface similarity)
        for j in neighbours[i]:
            if sims[i, j] >= config.positive_min:
                candidates["positive"].append((i, int(j), surface_similarity(sentences[i], sentences[j])))
    for i, close in enumerate(surface_neighbours(sentences, k)):
        for j, overlap in close:
            if sims[i, j] <= config.negative_max:
                candidates["negative"].append((i, j, overlap))
    chosen: dict[str, dict[int, int]] = {}
    rng = np.random.default_rng(config.seed)
    for kind, pairs in candidates.items():
        weights = ipw_weights(np.array([s for _, _, s in pairs]), config.bins)
        per_anchor: dict[int, list[tuple[int, float]]] = {}
        for (i, j, _), w in zip(pairs, weights):
            per_anchor.setdefault(i, []).append((j, w))
        chosen[kind] = {}
        for i, options in sorted(per_anchor.items()):
            p = np.array([w for _, w in options])
            chosen[kind][i] = options[int(rng.choice(len(options), p=p / p.sum()))][0]
    triplets, pairs = [], []
    for i, anchor in enumerate(sentences):
        positive = sentences[chosen["positive"].get(i, i)]
        if i in chosen["negative"]:
            triplets.append(row(side(anchor), side(positive), side(sentences[chosen["negative"][i]])))
        else:
            pairs.append(text_row(anchor, positive))
    return triplets, pairs
