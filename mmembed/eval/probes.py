"""Probes of an embedding space: alignment / uniformity, anisotropy, IsoScore, spectrum, token isotropy, per layer.

Every probe takes an ``(n, dim)`` numpy array or torch tensor (any float dtype, any device) and computes in float64.
Large inputs are processed in blocks, so memory stays bounded by the block size, not by ``n``.

Usage::

    from mmembed.eval import probes
    probes.probe(vectors, pairs=(first_vectors, second_vectors))   # all scalar probes of one matrix
    probes.layer_probes(embedder, sentences)                       # the same, for every layer of a decoder LLM

References: Wang & Isola 2020 (alignment, uniformity), Ethayarajh 2019 (average random cosine), Rudman et al. 2022
(IsoScore), Roy & Vetterli 2007 (effective rank), Su & Collier 2023 (SimCTG token isotropy).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .encoding import encode_split

ArrayLike = np.ndarray | Tensor

_BLOCK = 1024  # rows per block in the blockwise computations
_SVD_MAX_ENTRIES = 1 << 24  # above this, the spectrum comes from the d x d covariance instead of an SVD of the data


# ---------------------------------------------------------------------------------------------------------- helpers
def _matrix(x: ArrayLike, name: str = "x", min_rows: int = 2) -> Tensor:
    """``x`` as a 2-D floating torch tensor (no copy when possible), with its shape checked."""
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, Tensor) else x.detach()
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (n, dim) matrix of embeddings, got shape {tuple(t.shape)}.")
    if t.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row{'s' if min_rows > 1 else ''}, got {t.shape[0]}.")
    if t.shape[1] < 1:
        raise ValueError(f"{name} has no dimensions (shape {tuple(t.shape)}).")
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.float64)
    if t.is_complex():
        raise ValueError(f"{name} is complex; probes need real embeddings.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return t


def _normalized(rows: Tensor) -> Tensor:
    """Float64 L2-normalised rows (zero rows stay zero)."""
    return torch.nn.functional.normalize(rows.to(torch.float64), p=2, dim=-1)


def _blocks(n: int, size: int = _BLOCK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _spectrum(x: Tensor) -> Tensor:
    """Singular values of the centred matrix, descending, zero-padded to length ``dim`` (float64, CPU or x's device).

    An exact SVD of the centred data when it is small; otherwise the square roots of the eigenvalues of the
    blockwise-accumulated scatter matrix ``X_cᵀ X_c`` (memory ``dim²``, not ``n·dim``)."""
    n, d = x.shape
    mean = torch.zeros(d, dtype=torch.float64, device=x.device)
    for b in _blocks(n):
        mean += x[b].to(torch.float64).sum(0)
    mean /= n
    if n * d <= _SVD_MAX_ENTRIES:
        s = torch.linalg.svdvals(x.to(torch.float64) - mean)
    else:
        scatter = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for b in _blocks(n):
            c = x[b].to(torch.float64) - mean
            scatter += c.T @ c
        s = torch.linalg.eigvalsh(scatter).clamp(min=0).sqrt().flip(0)
    out = torch.zeros(d, dtype=torch.float64, device=x.device)
    out[: s.numel()] = s
    return out


def _effective_rank(s: Tensor) -> float:
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def _isoscore(variances: Tensor) -> float:
    n = variances.numel()
    if n < 2:
        raise ValueError("IsoScore needs embeddings with at least 2 dimensions.")
    norm = variances.norm()
    if norm <= 0:
        return 0.0
    scaled = variances * math.sqrt(n) / norm
    defect = (scaled - 1).norm() / math.sqrt(2 * (n - math.sqrt(n)))
    return float(((n - defect**2 * (n - math.sqrt(n))) ** 2 - n) / (n * (n - 1)))


def _variance_explained(variances: Tensor, fraction: float) -> float:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1].")
    total = variances.sum()
    if total <= 0:
        return 1.0
    k = math.ceil(fraction * variances.numel())
    return float(variances[:k].sum() / total)


# ---------------------------------------------------------------------------------------------------------- probes
def alignment(x: ArrayLike, y: ArrayLike, alpha: float = 2) -> float:
    """Alignment (Wang & Isola 2020): ``E_(x,y)~pos ‖f(x) − f(y)‖₂^α`` over positive pairs (row i of ``x`` with row i
    of ``y``), on L2-normalised rows. Lower is better; in [0, 2^α]."""
    a = _matrix(x, "x", min_rows=1)
    b = _matrix(y, "y", min_rows=1)
    if a.shape != b.shape:
        raise ValueError(f"positive pairs need x and y of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    total = 0.0
    for blk in _blocks(a.shape[0]):
        total += float((_normalized(a[blk]) - _normalized(b[blk]).to(a.device)).norm(dim=1).pow(alpha).sum())
    return total / a.shape[0]


def uniformity(x: ArrayLike, t: float = 2, *, max_points: int | None = 10_000, seed: int = 0,
               block_size: int = _BLOCK) -> float:
    """Uniformity (Wang & Isola 2020): ``log E_{i<j} exp(−t ‖f_i − f_j‖²)`` over all distinct pairs of L2-normalised
    rows, i.e. ``torch.pdist(f).pow(2).mul(-t).exp().mean().log()``. Lower is better; in [−4t, 0].

    Exact over all pairs, computed in ``block_size``² tiles with a running log-sum-exp; inputs with more than
    ``max_points`` rows are first subsampled (without replacement, seeded by ``seed``)."""
    data = _matrix(x)
    n = data.shape[0]
    if max_points is not None and n > max_points:
        if max_points < 2:
            raise ValueError(f"max_points={max_points} must be at least 2.")
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        data = data[torch.from_numpy(keep).to(data.device)]
        n = max_points
    logs = []
    for bi in _blocks(n, block_size):
        u = _normalized(data[bi])
        for bj in _blocks(n, block_size):
            if bj.start < bi.start:
                continue
            v = u if bj == bi else _normalized(data[bj])
            sq = (u.pow(2).sum(1, keepdim=True) + v.pow(2).sum(1) - 2 * u @ v.T).clamp(min=0)
            if bj == bi:
                rows, cols = torch.triu_indices(len(u), len(u), offset=1, device=sq.device)
                sq = sq[rows, cols]
            if sq.numel():
                logs.append(torch.logsumexp(-t * sq.flatten(), 0))
    return float(torch.logsumexp(torch.stack(logs), 0) - math.log(n * (n - 1) / 2))


def average_cosine(x: ArrayLike, n_pairs: int | None = 100_000, seed: int = 0) -> float:
    """Anisotropy as the average random cosine (Ethayarajh 2019): ``E_{i≠j} cos(f_i, f_j)`` over ``n_pairs`` random
    distinct pairs (seeded). High means anisotropic; 1 when all rows point the same way.

    When ``n(n−1)/2 ≤ n_pairs`` (or ``n_pairs=None``) it is the exact mean over all distinct pairs, computed in
    O(n·dim) as ``(‖Σ_i u_i‖² − n) / (n(n−1))`` with ``u_i`` the normalised rows (zero rows count as cosine 0)."""
    data = _matrix(x)
    n = data.shape[0]
    if n_pairs is None or n * (n - 1) // 2 <= n_pairs:
        total = torch.zeros(data.shape[1], dtype=torch.float64, device=data.device)
        norms = 0.0
        for b in _blocks(n):
            u = _normalized(data[b])
            total += u.sum(0)
            norms += float(u.pow(2).sum())  # n, less any zero rows
        return float((total.pow(2).sum() - norms) / (n * (n - 1)))
    if n_pairs < 1:
        raise ValueError(f"n_pairs={n_pairs} must be positive (or None for the exact mean).")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, size=n_pairs)
    second = (first + rng.integers(1, n, size=n_pairs)) % n  # uniform over the other n-1 rows
    total = 0.0
    for b in _blocks(n_pairs, 8 * _BLOCK):
        i = torch.from_numpy(first[b]).to(data.device)
        j = torch.from_numpy(second[b]).to(data.device)
        total += float((_normalized(data[i]) * _normalized(data[j])).sum())
    return total / n_pairs


def effective_rank(x: ArrayLike) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = σ / Σσ`` the normalised singular values of the
    centred matrix and ``H`` the Shannon entropy. Between 1 (one direction) and ``min(n − 1, dim)``; 0 for a constant
    matrix (no variance)."""
    return _effective_rank(_spectrum(_matrix(x)))


def isoscore(x: ArrayLike) -> float:
    """IsoScore (Rudman et al. 2022): 0 = all variance in one direction, 1 = isotropic.

    PCA-reorient the data (centre, project on the principal components), take the variance vector ``σ²`` (length
    ``n = dim``; zero for directions the data does not span), scale it to norm ``√n``, defect
    ``δ = ‖σ̂² − 1‖ / √(2(n − √n))``, ``IsoScore = ((n − δ²(n − √n))² − n) / (n(n − 1))``. Data spread equally over
    exactly ``k`` of the ``n`` dimensions scores ``(k − 1)/(n − 1)``. A constant matrix scores 0."""
    data = _matrix(x)
    return _isoscore(_spectrum(data).pow(2) / (data.shape[0] - 1))


def variance_explained(x: ArrayLike, fraction: float = 0.3) -> float:
    """Share of the total variance in the top ``k = ⌈fraction · dim⌉`` principal components:
    ``Σ_{i≤k} λ_i / Σ_i λ_i`` (``varex_score`` of the IsoScore repository). High means collapsed; a constant matrix
    gives 1."""
    data = _matrix(x)
    return _variance_explained(_spectrum(data).pow(2), fraction)


def token_isotropy(hidden: ArrayLike, mask: ArrayLike | None = None) -> float:
    """SimCTG token isotropy (Su & Collier 2023): ``1 − Σ_x Σ_{i≠j} cos(h_i, h_j) / Σ_x |x|(|x| − 1)``, the
    intra-sequence token cosine pooled over the batch.

    ``hidden`` is ``(batch, seq, dim)`` token states, ``mask`` ``(batch, seq)`` with 1 for real tokens (default: all);
    sequences with fewer than 2 tokens add nothing."""
    h = torch.from_numpy(np.asarray(hidden)) if not isinstance(hidden, Tensor) else hidden.detach()
    if h.dim() != 3:
        raise ValueError(f"hidden must be (batch, seq, dim) token states, got shape {tuple(h.shape)}.")
    if mask is None:
        m = torch.ones(h.shape[:2], dtype=torch.float64, device=h.device)
    else:
        m = torch.from_numpy(np.asarray(mask)) if not isinstance(mask, Tensor) else mask.detach()
        if tuple(m.shape) != tuple(h.shape[:2]):
            raise ValueError(f"mask must have shape (batch, seq) = {tuple(h.shape[:2])}, got {tuple(m.shape)}.")
        m = (m.to(h.device) != 0).to(torch.float64)
    if not bool(torch.isfinite(h[m.bool()]).all()):
        raise ValueError("hidden contains NaN or infinite values at unmasked positions.")
    u = torch.where(m.bool().unsqueeze(-1), _normalized(h), 0.0)
    counts = m.sum(1)
    pairs = float((counts * (counts - 1)).sum())
    if pairs == 0:
        raise ValueError("token_isotropy needs at least one sequence with 2 or more (unmasked) tokens.")
    cosines = float((u.sum(1).pow(2).sum(1) - u.pow(2).sum((1, 2))).sum())  # Σ_{i≠j} u_i·u_j per sequence
    return 1.0 - cosines / pairs


def probe(embeddings: ArrayLike, pairs: tuple[ArrayLike, ArrayLike] | None = None, *,
          seed: int = 0) -> dict[str, float]:
    """All scalar probes of one ``(n, dim)`` matrix: ``uniformity``, ``average_cosine``, ``isoscore``,
    ``effective_rank``, ``variance_explained`` and, when positive pairs ``(x, y)`` are given, ``alignment``."""
    data = _matrix(embeddings, "embeddings")
    s = _spectrum(data)
    variances = s.pow(2) / (data.shape[0] - 1)
    out: dict[str, float] = {}
    if pairs is not None:
        if len(pairs) != 2:
            raise ValueError("pairs must be a tuple (x, y) of two matrices of positive pairs.")
        out["alignment"] = alignment(*pairs)
    out["uniformity"] = uniformity(data, seed=seed)
    out["average_cosine"] = average_cosine(data, seed=seed)
    out["isoscore"] = _isoscore(variances)
    out["effective_rank"] = _effective_rank(s)
    out["variance_explained"] = _variance_explained(variances, 0.3)
    return out


def sts_positive_pairs(first: Sequence[str], second: Sequence[str], gold: Sequence[float] | np.ndarray,
                       threshold: float = 4.0) -> tuple[list[str], list[str]]:
    """The STS pairs whose gold score is above ``threshold`` (SimCSE's alignment subset of STS-B: score > 4), as
    ``(first, second)`` lists to embed and feed to :func:`alignment`."""
    scores = np.asarray(gold, dtype=np.float64).reshape(-1)
    if not len(first) == len(second) == len(scores):
        raise ValueError(f"first, second and gold must have the same length, got {len(first)}, {len(second)} "
                         f"and {len(scores)}.")
    keep = np.flatnonzero(scores > threshold)
    return [first[i] for i in keep], [second[i] for i in keep]


def layer_probes(embedder: Any, sentences: Sequence[str], pairs: tuple[Sequence[str], Sequence[str]] | None = None,
                 layers: Sequence[int] | None = None, batch_size: int = 32, **encode_kwargs: Any
                 ) -> dict[int, dict[str, float]]:
    """:func:`probe` of the embeddings of ``sentences`` taken at each layer of the backbone (default: every layer
    ``1..num_layers``; an intermediate layer passes through the model's final norm), with ``alignment`` on the text
    ``pairs = (first, second)`` when given.

    ``embedder.backbone.layer`` is set to each layer in turn and restored afterwards (also on error); the unique texts
    are encoded once per layer with ``embedder.encode(..., batch_size=batch_size, **encode_kwargs)``."""
    backbone = embedder.backbone
    num_layers = backbone.config.get_text_config().num_hidden_layers
    if layers is None:
        layers = range(1, num_layers + 1)
    layers = list(layers)
    for layer in layers:
        valid = isinstance(layer, (int, np.integer)) and not isinstance(layer, bool)
        if not valid or not -num_layers - 1 <= layer <= num_layers:
            raise ValueError(f"layer {layer!r} is out of range for a model with {num_layers} layers "
                             f"(use 0..{num_layers}, or negative indices).")
    if len(sentences) < 2:
        raise ValueError(f"layer_probes needs at least 2 sentences, got {len(sentences)}.")
    if pairs is not None:
        if len(pairs) != 2 or len(pairs[0]) != len(pairs[1]):
            raise ValueError("pairs must be (first, second): two lists of texts of the same length.")
        if len(pairs[0]) == 0:
            raise ValueError("pairs holds no positive pair.")
    if getattr(embedder, "multi_vector", False):
        raise ValueError("layer_probes needs one embedding per input; this embedder's pooler gives several.")
    texts = list(sentences) + (list(pairs[0]) + list(pairs[1]) if pairs is not None else [])
    unique = list(dict.fromkeys(texts))
    index = {text: i for i, text in enumerate(unique)}
    rows = {name: np.array([index[t] for t in group]) for name, group in
            [("sentences", sentences)] + ([("first", pairs[0]), ("second", pairs[1])] if pairs is not None else [])}
    saved = backbone.layer
    results: dict[int, dict[str, float]] = {}
    try:
        for layer in layers:
            backbone.layer = int(layer)
            vectors = np.asarray(encode_split(embedder, unique, batch_size=batch_size, **encode_kwargs))
            positive = (vectors[rows["first"]], vectors[rows["second"]]) if pairs is not None else None
            results[int(layer)] = probe(vectors[rows["sentences"]], positive)
    finally:
        backbone.layer = saved
    return results


def read_probe_data(path: str | Path, max_sentences: int | None = 2000, seed: int = 0
                    ) -> tuple[list[str], tuple[list[str], list[str]] | None]:
    """Sentences to probe and optional positive pairs: an STS-B file (``.csv``, SentEval layout) gives its
    sentences and the pairs with gold > 4; any other file gives one sentence a line. At most ``max_sentences``
    sentences and ``max_sentences // 2`` pairs (seeded samples)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"probe data {path} is not a file.")
    pairs = None
    if path.suffix == ".csv":
        from .sts import read_sts_benchmark

        first, second, gold = read_sts_benchmark(path)
        sentences = list(dict.fromkeys(first + second))
        pairs = sts_positive_pairs(first, second, gold)
        if max_sentences is not None and len(pairs[0]) > max_sentences // 2:  # pairs add two texts each
            keep = np.sort(np.random.default_rng(seed + 1).choice(len(pairs[0]), max_sentences // 2, replace=False))
            pairs = ([pairs[0][i] for i in keep], [pairs[1][i] for i in keep])
        pairs = pairs if pairs[0] else None
    else:
        sentences = list(dict.fromkeys(s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()))
    if max_sentences is not None and len(sentences) > max_sentences:
        keep = np.sort(np.random.default_rng(seed).choice(len(sentences), max_sentences, replace=False))
        sentences = [sentences[i] for i in keep]
    return sentences, pairs


def probes_report(embedder: Any, data: str | Path, *, layers: bool = False, max_sentences: int | None = 2000,
                  seed: int = 0, batch_size: int = 32):
    """Probes of ``embedder`` on the sentences of ``data`` (see :func:`read_probe_data`), with a per-layer view when
    ``layers``; returns a :class:`~mmembed.eval.report.Report` (score column: IsoScore x 100)."""
    from .report import Report, describe_model, file_hashes

    sentences, pairs = read_probe_data(data, max_sentences, seed)
    unique = list(dict.fromkeys(sentences + (pairs[0] + pairs[1] if pairs else [])))
    vectors = np.asarray(encode_split(embedder, unique, batch_size=batch_size))
    index = {s: i for i, s in enumerate(unique)}
    positive = (vectors[[index[s] for s in pairs[0]]], vectors[[index[s] for s in pairs[1]]]) if pairs else None
    final = probe(vectors[[index[s] for s in sentences]], positive, seed=seed)
    tasks = {"embeddings": {"score": 100 * final["isoscore"], "metric": "isoscore", "n": len(sentences), **final}}
    if layers:
        for layer, values in layer_probes(embedder, sentences, pairs, batch_size=batch_size).items():
            tasks[f"layer {layer}"] = {"score": 100 * values["isoscore"], "metric": "isoscore", "n": len(sentences),
                                       **values}
    return Report(
        suite="probes", metric="IsoScore x 100", tasks=tasks, summary=dict(final), model=describe_model(embedder),
        protocol={"alignment": "alpha=2 on pairs with gold > 4" if pairs else None, "uniformity": "t=2",
                  "average_cosine": "100k random distinct pairs", "max_sentences": max_sentences},
        data={"root": str(data), "files": file_hashes([data])}, seeds={"sample": seed},
    )
