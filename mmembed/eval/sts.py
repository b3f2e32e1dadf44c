"""STS evaluation: Spearman correlation between cosine similarity and gold scores (SentEval / SimCSE protocol:
one correlation over all pairs of the split, scores x 100)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_sts_benchmark(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """STS-B in the SentEval layout: tab-separated ``genre, file, year, id, score, sentence1, sentence2``."""
    first, second, scores = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 7:
            raise ValueError(f"{path}:{number}: {len(fields)} fields, expected at least 7.")
        scores.append(float(fields[4]))
        first.append(fields[5])
        second.append(fields[6])
    return first, second, np.array(scores)


def spearman(embedder, first: list[str], second: list[str], gold: np.ndarray, batch_size: int = 64) -> float:
    """Spearman x 100 of cos(e(first_i), e(second_i)) against ``gold``."""
    from scipy.stats import spearmanr

    unique = list(dict.fromkeys(first + second))
    vectors = embedder.encode(unique, batch_size=batch_size, normalize=True)
    index = {s: i for i, s in enumerate(unique)}
    a = vectors[[index[s] for s in first]]
    b = vectors[[index[s] for s in second]]
    return float(spearmanr((a * b).sum(1), gold).statistic * 100)


def sts_benchmark_spearman(embedder, path: str | Path, batch_size: int = 64) -> float:
    return spearman(embedder, *read_sts_benchmark(path), batch_size=batch_size)
