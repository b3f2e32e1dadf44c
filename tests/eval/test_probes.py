"""Embedding-space probes against hand-computed values (and, for layer_probes, a tiny random Qwen2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mmembed
from mmembed.eval import probes
from mmembed.eval.probes import (
    alignment,
    average_cosine,
    effective_rank,
    isoscore,
    layer_probes,
    probe,
    sts_positive_pairs,
    token_isotropy,
    uniformity,
    variance_explained,
)

SENTENCES = ["A man is playing a guitar.", "A woman slices an onion.", "The cat sleeps on the sofa.",
             "Stocks fell sharply on Monday.", "Two dogs run through a field.", "A man is playing a guitar."]


def _signed_axes(scales: list[float], dim: int) -> np.ndarray:
    """Rows ±scale_i·e_i: mean zero, orthogonal columns, variance ∝ scale_i² along axis i and 0 elsewhere."""
    rows = []
    for i, s in enumerate(scales):
        e = np.zeros(dim)
        e[i] = s
        rows += [e, -e]
    return np.array(rows)


# ----------------------------------------------------------------------------------------------------- alignment
def test_alignment_hand_values():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    assert alignment(np.array([e1, e2]), np.array([e2, e1])) == pytest.approx(2.0)  # ‖e1 − e2‖² = 2
    assert alignment(np.array([e1, e2]), np.array([e1, e2])) == 0.0
    assert alignment(np.array([e1]), np.array([e2]), alpha=1) == pytest.approx(math.sqrt(2))
    # normalised inside: (3, 0) vs (0, 5) is the orthogonal unit pair
    assert alignment(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 5.0]])) == pytest.approx(2.0)
    # 60° pair: ‖u − v‖² = 2 − 2·cos 60° = 1; with a 90° pair the mean is 1.5 (α=2), (1 + √2)/2 (α=1)
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.5, math.sqrt(3) / 2], [0.0, 2.0]])
    assert alignment(x, y) == pytest.approx(1.5)
    assert alignment(x, y, alpha=1) == pytest.approx((1 + math.sqrt(2)) / 2)


def test_alignment_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        alignment(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        alignment(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="at least 1 row"):
        alignment(np.ones((0, 4)), np.ones((0, 4)))


# ----------------------------------------------------------------------------------------------------- uniformity
def test_uniformity_hand_values():
    # two antipodal points: ‖f1 − f2‖² = 4, log exp(−2·4) = −8
    assert uniformity(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-8.0)
    # equilateral triangle on the circle: cos = −1/2, ‖·‖² = 3 for all 3 pairs
    triangle = np.array([[math.cos(a), math.sin(a)] for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    assert uniformity(triangle) == pytest.approx(-6.0)
    assert uniformity(triangle, t=1) == pytest.approx(-3.0)
    # regular tetrahedron on S²: cos = −1/3, ‖·‖² = 2 + 2/3 = 8/3 for all 6 pairs -> −16/3
    tetrahedron = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float32)
    assert uniformity(tetrahedron) == pytest.approx(-16 / 3)
    # e1, e2, −e1: squared distances 2, 4, 2 -> log((2e^−4 + e^−8)/3)
    assert uniformity(np.array([[1.0, 0], [0, 1.0], [-1.0, 0]])) == pytest.approx(
        math.log((2 * math.exp(-4) + math.exp(-8)) / 3))
    # identical points: log exp(0) = 0
    assert uniformity(np.ones((5, 3))) == pytest.approx(0.0, abs=1e-12)


def _pdist_uniformity(x: torch.Tensor, t: float = 2) -> float:
    x = torch.nn.functional.normalize(x.double(), dim=-1)
    return float(torch.pdist(x).pow(2).mul(-t).exp().mean().log())


@pytest.mark.parametrize("block_size", [1024, 7, 1])
def test_uniformity_matches_pdist_formula_in_blocks(block_size):
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    expected = _pdist_uniformity(x)
    assert uniformity(x, block_size=block_size) == pytest.approx(expected, abs=1e-12)
    assert uniformity(x.numpy().astype(np.float16), block_size=block_size) == pytest.approx(
        _pdist_uniformity(torch.from_numpy(x.numpy().astype(np.float16))), abs=1e-12)
    assert uniformity(3 * x.double(), t=0.5, block_size=block_size) == pytest.approx(_pdist_uniformity(x, 0.5),
                                                                                     abs=1e-12)


def test_uniformity_subsample_is_seeded_and_exact_on_the_subset():
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    keep = np.sort(np.random.default_rng(3).choice(40, size=12, replace=False))
    assert uniformity(x, max_points=12, seed=3, block_size=5) == pytest.approx(_pdist_uniformity(x[keep]),
                                                                               abs=1e-12)
    assert uniformity(x, max_points=40) == pytest.approx(_pdist_uniformity(x), abs=1e-12)
    assert uniformity(x, max_points=None) == pytest.approx(_pdist_uniformity(x), abs=1e-12)


def test_uniformity_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        uniformity(np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        uniformity(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ----------------------------------------------------------------------------------------------------- cosine
def test_average_cosine_exact_hand_value():
    # cos(e1, e2) = 0, cos(e1, e1+e2) = cos(e2, e1+e2) = 1/√2 -> mean √2/3
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert average_cosine(x) == pytest.approx(math.sqrt(2) / 3, abs=1e-12)
    assert average_cosine(x, n_pairs=None) == pytest.approx(math.sqrt(2) / 3, abs=1e-12)
    # antipodal pair: −1; a zero row counts as cosine 0: pairs (e1, 0), (e1, −e1), (0, −e1) -> −1/3
    assert average_cosine(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    assert average_cosine(np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1 / 3)


def test_average_cosine_constant_vectors_is_one():
    x = np.tile([0.3, -1.0, 2.0], (1000, 1))
    assert average_cosine(x) == pytest.approx(1.0, abs=1e-12)  # sampled: 499500 pairs > 100000
    assert average_cosine(x, n_pairs=50) == pytest.approx(1.0, abs=1e-12)
    assert average_cosine(x, n_pairs=None) == pytest.approx(1.0, abs=1e-12)


def test_average_cosine_sampled_is_close_to_exact_and_seeded():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0)) + 0.3
    u = torch.nn.functional.normalize(x.double(), dim=-1)
    cos = u @ u.T
    exact = float(cos[torch.triu_indices(200, 200, 1).unbind()].mean())
    assert average_cosine(x, n_pairs=None) == pytest.approx(exact, abs=1e-12)
    assert average_cosine(x, n_pairs=200 * 199 // 2) == pytest.approx(exact, abs=1e-12)
    sampled = average_cosine(x, n_pairs=5000, seed=1)
    assert sampled != pytest.approx(exact, abs=1e-9)  # really sampled
    assert sampled == pytest.approx(exact, abs=0.02)
    assert average_cosine(x, n_pairs=5000, seed=1) == sampled


# ----------------------------------------------------------------------------------------------------- spectrum
def test_effective_rank_hand_values():
    # ±e_i in 5 dims: 5 equal singular values -> 5
    assert effective_rank(_signed_axes([1.0] * 5, 5)) == pytest.approx(5.0, abs=1e-9)
    # rank 1 (a line not through the origin): 1
    a = np.arange(1, 11, dtype=np.float64)[:, None]
    assert effective_rank(a * np.array([1.0, -2.0, 0.5, 3.0]) + 7.0) == pytest.approx(1.0, abs=1e-9)
    # ±3e1, ±e2: σ = (3√2, √2), p = (3/4, 1/4) -> exp(−(¾ ln ¾ + ¼ ln ¼))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(_signed_axes([3.0, 1.0], 4)) == pytest.approx(expected, abs=1e-12)
    # the identity matrix centred has d − 1 equal singular values and one zero
    assert effective_rank(np.eye(6)) == pytest.approx(5.0, abs=1e-9)
    assert effective_rank(np.ones((4, 3))) == 0.0


def test_spectrum_covariance_route_matches_svd(monkeypatch):
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(0)) @ torch.randn(
        12, 12, generator=torch.Generator().manual_seed(1))
    svd = probes._spectrum(x)
    values = (effective_rank(x), isoscore(x), variance_explained(x))
    monkeypatch.setattr(probes, "_SVD_MAX_ENTRIES", 0)
    monkeypatch.setattr(probes, "_BLOCK", 64)  # several blocks
    assert torch.allclose(probes._spectrum(x), svd, rtol=1e-9)
    assert (effective_rank(x), isoscore(x), variance_explained(x)) == pytest.approx(values, abs=1e-9)


def test_isoscore_isotropic_gaussian_is_close_to_one():
    x = np.random.default_rng(0).standard_normal((20000, 10))
    assert isoscore(x) > 0.95


def test_isoscore_line_is_zero():
    t = np.random.default_rng(0).standard_normal((100, 1))
    assert isoscore(t * np.array([1.0, 2.0, -1.0, 0.5, 3.0, 0.0, 1.0, 1.0]) + 5.0) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_isoscore_k_of_n_dimensions_closed_form(k):
    """Variance c in k of n dims: σ̂² = √(n/k) on k dims, δ² = (n − √(nk))/(n − √n), so n − δ²(n − √n) = √(nk) and
    IsoScore = (nk − n)/(n(n − 1)) = (k − 1)/(n − 1)."""
    n = 6
    x = _signed_axes([2.0] * k, n) @ np.linalg.qr(np.random.default_rng(k).standard_normal((n, n)))[0]  # rotated
    assert isoscore(x) == pytest.approx((k - 1) / (n - 1), abs=1e-9)


def test_isoscore_matches_reference_pipeline():
    """The steps of Rudman et al.'s IsoScore.py: sklearn PCA, diagonal of np.cov, scaling, defect, score."""
    from sklearn.decomposition import PCA

    x = np.random.default_rng(0).standard_normal((400, 8)) * np.array([5, 3, 2, 1, 1, 0.5, 0.2, 0.1])
    points = PCA(n_components=8).fit_transform(x).T
    diag = np.cov(points)[np.diag_indices(8)]
    diag = diag * np.sqrt(8) / np.linalg.norm(diag)
    defect = np.linalg.norm(diag - 1) / np.sqrt(2 * (8 - np.sqrt(8)))
    expected = ((8 - defect**2 * (8 - np.sqrt(8))) ** 2 - 8) / (8 * 7)
    assert isoscore(x) == pytest.approx(expected, abs=1e-9)
    assert isoscore(torch.from_numpy(x).float()) == pytest.approx(expected, abs=1e-4)


def test_isoscore_needs_two_dimensions():
    with pytest.raises(ValueError, match="2 dimensions"):
        isoscore(np.arange(5.0)[:, None])


def test_variance_explained_hand_value():
    # ±2e1, ±e2..±e10: σ² ∝ (4, 1 × 9); top ⌈0.3·10⌉ = 3 components -> 6/13
    x = _signed_axes([2.0] + [1.0] * 9, 10)
    assert variance_explained(x) == pytest.approx(6 / 13, abs=1e-12)
    assert variance_explained(x, fraction=0.05) == pytest.approx(4 / 13, abs=1e-12)  # ⌈0.5⌉ = 1
    assert variance_explained(x, fraction=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fraction"):
        variance_explained(x, fraction=0)


# ----------------------------------------------------------------------------------------------------- tokens
def test_token_isotropy_hand_batch_with_padding():
    """Sequence 1: e1, e2 (+ padding): 2 ordered pairs of cosine 0. Sequence 2: (1,0), (2,0), (−1,0): cosines
    1, −1, −1, each twice -> −2 over 6 pairs. Sequence 3: one token, no pair. Isotropy = 1 − (0 − 2)/(2 + 6)."""
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [float("nan"), 5.0]],
                           [[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]],
                           [[3.0, 3.0], [float("inf"), 1.0], [7.0, -1.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert token_isotropy(hidden, mask) == pytest.approx(1.25)
    assert token_isotropy(hidden.numpy(), mask.numpy().astype(bool)) == pytest.approx(1.25)
    # no mask: every token is real; all tokens equal -> 0, orthogonal pair -> 1
    assert token_isotropy(np.ones((2, 4, 3))) == pytest.approx(0.0, abs=1e-12)
    assert token_isotropy(np.array([[[1.0, 0.0], [0.0, 1.0]]])) == pytest.approx(1.0)


def test_token_isotropy_bad_inputs():
    with pytest.raises(ValueError, match="batch, seq, dim"):
        token_isotropy(np.ones((3, 4)))
    with pytest.raises(ValueError, match="mask must have shape"):
        token_isotropy(np.ones((2, 3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="2 or more"):
        token_isotropy(np.ones((2, 3, 4)), np.array([[1, 0, 0], [0, 0, 0]]))


# ----------------------------------------------------------------------------------------------------- probe / pairs
def test_probe_collects_every_probe():
    x = np.random.default_rng(0).standard_normal((30, 6))
    y = x + 0.1 * np.random.default_rng(1).standard_normal((30, 6))
    out = probe(x, pairs=(x, y))
    assert out == pytest.approx({"alignment": alignment(x, y), "uniformity": uniformity(x),
                                 "average_cosine": average_cosine(x), "isoscore": isoscore(x),
                                 "effective_rank": effective_rank(x), "variance_explained": variance_explained(x)},
                                abs=1e-12)
    assert "alignment" not in probe(x)
    with pytest.raises(ValueError, match="at least 2 rows"):
        probe(x[:1])
    with pytest.raises(ValueError, match="same shape"):
        probe(x, pairs=(x, y[:5]))


def test_sts_positive_pairs():
    first, second = sts_positive_pairs(["a", "b", "c", "d"], ["A", "B", "C", "D"], np.array([4.5, 4.0, 5.0, 1.0]))
    assert (first, second) == (["a", "c"], ["A", "C"])
    assert sts_positive_pairs(["a", "b"], ["A", "B"], [3.0, 2.5], threshold=2.9) == (["a"], ["A"])
    with pytest.raises(ValueError, match="same length"):
        sts_positive_pairs(["a"], ["A", "B"], [5.0, 5.0])


# ----------------------------------------------------------------------------------------------------- layers
@pytest.fixture(scope="module")
def qwen2(qwen2_path):
    return mmembed.load(str(qwen2_path), pooling="last", dtype="float32")


def test_layer_probes_per_layer_match_direct_encoding(qwen2, monkeypatch):
    calls: list[list[str]] = []
    encode = qwen2.encode

    def recording_encode(texts, **kwargs):
        calls.append(list(texts))
        return encode(texts, **kwargs)

    first, second = SENTENCES[:3], SENTENCES[3:]
    with monkeypatch.context() as patch:
        patch.setattr(qwen2, "encode", recording_encode)
        out = layer_probes(qwen2, SENTENCES, pairs=(first, second), batch_size=4)
    assert sorted(out) == [1, 2]
    assert qwen2.backbone.layer == -1
    assert len(calls) == 2 and all(c == list(dict.fromkeys(SENTENCES)) for c in calls)  # unique texts, once a layer
    assert out[2] == pytest.approx(probe(qwen2.encode(SENTENCES), pairs=(qwen2.encode(first), qwen2.encode(second))),
                                   abs=1e-6)
    qwen2.backbone.layer = 1
    try:
        layer1 = probe(qwen2.encode(SENTENCES), pairs=(qwen2.encode(first), qwen2.encode(second)))
    finally:
        qwen2.backbone.layer = -1
    assert out[1] == pytest.approx(layer1, abs=1e-6)
    assert out[1]["uniformity"] != pytest.approx(out[2]["uniformity"], abs=1e-6)  # really another layer


def test_layer_probes_layer_one_is_the_normed_first_hidden_state(qwen2_path, qwen2):
    """Reference: a plain transformers forward, hidden_states[1] of the last token through the final norm."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen2_path)
    base = AutoModel.from_pretrained(qwen2_path, dtype=torch.float32)
    sentences = SENTENCES[:5]
    with torch.no_grad():
        ref = torch.stack([base.norm(base(**tokenizer(s, return_tensors="pt"), output_hidden_states=True)
                                     .hidden_states[1][0, -1]) for s in sentences])
    out = layer_probes(qwen2, sentences, layers=[1])
    assert list(out) == [1]
    assert out[1] == pytest.approx(probe(ref.numpy()), abs=1e-5)


def test_layer_probes_restores_layer_on_error(qwen2, monkeypatch):
    def failing_encode(texts, **kwargs):
        assert qwen2.backbone.layer == 1
        raise RuntimeError("boom")

    assert qwen2.backbone.layer == -1
    with monkeypatch.context() as patch:
        patch.setattr(qwen2, "encode", failing_encode)
        with pytest.raises(RuntimeError, match="boom"):
            layer_probes(qwen2, SENTENCES, layers=[1, 2])
    assert qwen2.backbone.layer == -1
    with pytest.raises(ValueError, match="out of range"):
        layer_probes(qwen2, SENTENCES, layers=[3])
    with pytest.raises(ValueError, match="at least 2 sentences"):
        layer_probes(qwen2, SENTENCES[:1])
    assert qwen2.backbone.layer == -1
