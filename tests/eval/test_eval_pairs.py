"""MSRP-style pair classification: cosine AP (hand-computed, ties, sklearn agreement), accuracy and F1 at the
best threshold, the reader's errors, and a tiny real model against a direct computation from ``encode``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mmembed
from mmembed.data.formats import DataError
from mmembed.eval.pairs import (
    PairDataError,
    best_threshold_metrics,
    binary_average_precision,
    evaluate_pair_classification,
    read_msrp,
)

HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
SHARED_MSRP = Path(__file__).resolve().parents[3] / "shared" / "data" / "msrp" / "msr-para-val.tsv"


def write_msrp(path: Path, rows: list[tuple[int, str, str]], header: str = HEADER) -> Path:
    path.write_text(header + "\r\n" + "".join(f"{q}\t{i}\t{i + 1000}\t{a}\t{b}\r\n" for i, (q, a, b) in enumerate(rows)),
                    encoding="utf-8")
    return path


class TableEmbedder:
    """Fixed 2-d unit vectors per sentence: the pair ``("a<i>", "b<i>")`` gets exactly the cosine ``cosines[i]``."""

    embedding_dim = 2

    def __init__(self, cosines: list[float]):
        self.vectors = {}
        for i, c in enumerate(cosines):
            self.vectors[f"a{i}"] = np.array([1.0, 0.0])
            self.vectors[f"b{i}"] = np.array([c, np.sqrt(1 - c * c)])
        self.calls: list[list[str]] = []

    def encode(self, sentences, **kwargs):
        self.calls.append(list(sentences))
        return np.stack([self.vectors[s] for s in sentences]).astype(np.float32)


def test_ap_accuracy_f1_hand_computed(tmp_path):
    # cosines 0.9 0.8 0.7 0.6 0.5, labels 1 0 1 0 1 (already in decreasing order):
    #   AP = (1/1 + 2/3 + 3/5) / 3 = 2.26667 / 3 = 0.755556
    #   accuracy at each cut (predict the top k positive): k=1 (1+2)/5=0.6, k=2 (1+1)/5=0.4, k=3 (2+1)/5=0.6,
    #     k=4 (2+0)/5=0.4 -> best 0.6, the highest threshold (0.9+0.8)/2 = 0.85
    #   F1: k=1 P=1 R=1/3 F=0.5; k=2 P=1/2 R=1/3 F=0.4; k=3 P=2/3 R=2/3 F=2/3; k=4 P=1/2 R=2/3 F=4/7
    #     -> best 2/3 at (0.7+0.6)/2 = 0.65
    cosines, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1]
    order = [3, 0, 4, 2, 1]  # file order is irrelevant
    path = write_msrp(tmp_path / "toy.tsv", [(labels[i], f"a{i}", f"b{i}") for i in order])
    embedder = TableEmbedder(cosines)
    report = evaluate_pair_classification(embedder, path)
    entry = report.tasks["toy"]
    assert entry["score"] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3, abs=1e-9)
    assert entry["ap"] == entry["score"] and report.metric == "cosine AP x 100"
    assert entry["accuracy"] == pytest.approx(60.0) and entry["accuracy_threshold"] == pytest.approx(0.85)
    assert entry["f1"] == pytest.approx(200 / 3) and entry["f1_threshold"] == pytest.approx(0.65)
    assert entry["precision"] == pytest.approx(200 / 3) and entry["recall"] == pytest.approx(200 / 3)
    assert entry["n"] == 5 and entry["positives"] == 3
    assert len(embedder.calls) == 1 and len(embedder.calls[0]) == 10  # every distinct sentence once, in one call
    assert str(path) in report.data["files"]


def test_duplicate_sentences_encoded_once(tmp_path):
    path = write_msrp(tmp_path / "dup.tsv", [(1, "a0", "b0"), (0, "a0", "b1"), (1, "b1", "a0")])
    embedder = TableEmbedder([0.5, 0.2])
    evaluate_pair_classification(embedder, path)
    assert sorted(embedder.calls[0]) == ["a0", "b0", "b1"]


def test_ties_are_one_step_whatever_the_order():
    # cosines 0.8 0.8 0.8 0.2 with labels 0 1 1 0: the tied group enters at once (2 TP, 1 FP):
    #   AP = recall gain 1 x precision 2/3 = 0.666667; breaking the tie positives-first would give 1.0,
    #   negatives-first (1/2 + 2/3) / 2 = 0.583333
    scores, labels = np.array([0.8, 0.8, 0.8, 0.2]), np.array([0, 1, 1, 0])
    assert binary_average_precision(scores, labels) == pytest.approx(2 / 3)
    for perm in ([1, 2, 0, 3], [3, 2, 1, 0], [0, 3, 1, 2]):
        assert binary_average_precision(scores[perm], labels[perm]) == pytest.approx(2 / 3)
    noisy = scores + np.array([0.0, 3e-8, -2e-8, 0.0])  # float noise of equal vectors does not split the tie
    assert binary_average_precision(noisy, labels) == pytest.approx(2 / 3)
    best = best_threshold_metrics(scores, labels)  # the only threshold: 0.5 (all three tied pairs positive)
    assert best["accuracy"] == pytest.approx(0.75) and best["accuracy_threshold"] == pytest.approx(0.5)
    assert best["f1"] == pytest.approx(0.8) and best["precision"] == pytest.approx(2 / 3) and best["recall"] == 1.0


def test_all_tied_and_no_positive():
    labels = np.array([1, 0, 1, 1])
    assert binary_average_precision(np.full(4, 0.3), labels) == pytest.approx(0.75)  # the positive rate
    assert all(v is None for v in best_threshold_metrics(np.full(4, 0.3), labels).values())
    assert binary_average_precision(np.array([0.9, 0.1]), np.array([0, 0])) == 0.0


def test_agrees_with_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(100):
        n = int(rng.integers(5, 50))
        scores = rng.random(n) if trial % 2 else np.round(rng.random(n), 1)  # odd trials: many ties
        labels = rng.integers(0, 2, n)
        labels[0], labels[1] = 0, 1
        assert binary_average_precision(scores, labels) == pytest.approx(
            sklearn_metrics.average_precision_score(labels, scores), abs=1e-12)


def test_read_msrp_quotes_and_crlf(tmp_path):
    path = write_msrp(tmp_path / "q.tsv", [(1, 'He said "no" to it.', "\"Quoted start"), (0, "x's", 'end"')])
    first, second, labels = read_msrp(path)
    assert first == ['He said "no" to it.', "x's"] and second == ['"Quoted start', 'end"']
    assert labels.tolist() == [1, 0]


@pytest.mark.parametrize("line, problem", [
    ("1\t1\t2\tonly four fields", "4 tab-separated fields, expected 5"),
    ("yes\t1\t2\ta\tb", "Quality 'yes' must be 0 or 1"),
    ("1\t1\t2\t \tb", "empty sentence"),
])
def test_bad_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.tsv"
    path.write_text(f"{HEADER}\n1\t1\t2\tfine\tpair\n{line}\n", encoding="utf-8")
    with pytest.raises(PairDataError, match=problem) as error:
        read_msrp(path)
    assert f"{path}:3:" in str(error.value) and isinstance(error.value, DataError)


def test_header_checked(tmp_path):
    path = write_msrp(tmp_path / "noheader.tsv", [(1, "a", "b")], header="1\t1\t2\ta\tb")
    with pytest.raises(PairDataError, match="header must be") as error:
        read_msrp(path)
    assert f"{path}:1:" in str(error.value)
    with pytest.raises(PairDataError, match="not found"):
        read_msrp(tmp_path / "absent.tsv")
    empty = tmp_path / "empty.tsv"
    empty.write_text(HEADER + "\n")
    with pytest.raises(PairDataError, match="no pairs"):
        read_msrp(empty)


def test_shared_msrp_val_reads():
    if not SHARED_MSRP.is_file():
        pytest.skip(f"{SHARED_MSRP} not present")
    first, second, labels = read_msrp(SHARED_MSRP)
    assert len(first) == len(second) == len(labels) == 500 and int(labels.sum()) == 346
    assert any('"' in s for s in first + second)


def test_tiny_model_equals_direct_cosines(qwen2_path, tmp_path):
    sentences = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.",
                 "A cat sits on the mat.", "Two dogs run in the park.", "the quick brown fox jumps over the lazy dog",
                 "A cat is on a mat.", "Stocks dropped."]
    rows = [(1, sentences[0], sentences[1]), (0, sentences[0], sentences[2]), (1, sentences[3], sentences[6]),
            (0, sentences[4], sentences[5]), (1, sentences[2], sentences[7]), (0, sentences[6], sentences[4]),
            (0, sentences[5], sentences[1])]
    path = write_msrp(tmp_path / "tiny.tsv", rows)
    model = mmembed.load(str(qwen2_path), dtype="float32")
    report = evaluate_pair_classification(model, path, batch_size=3)
    first = model.encode([r[1] for r in rows], normalize=True, batch_size=1)
    second = model.encode([r[2] for r in rows], normalize=True, batch_size=1)
    cosine = (first * second).sum(1)
    assert np.diff(np.sort(cosine)).min() > 1e-4  # no near-ties: the ranking cannot depend on batching noise
    labels = np.array([r[0] for r in rows])
    # AP written out: precision at each positive's rank, averaged over the positives (no ties here)
    ranked = labels[np.argsort(-cosine)]
    expected_ap = np.mean([ranked[:k + 1].sum() / (k + 1) for k in np.flatnonzero(ranked)])
    entry = report.tasks["tiny"]
    assert entry["score"] == pytest.approx(100 * expected_ap, abs=1e-9)
    assert {k: entry[k] for k in ("accuracy", "f1")} == pytest.approx(
        {k: 100 * v for k, v in best_threshold_metrics(cosine, labels).items() if k in ("accuracy", "f1")})
    assert report.model["name_or_path"] == str(qwen2_path)


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes(f"{HEADER}\n1\t1\t2\tfine\tpair\n".encode() + "0\t3\t4\tcafé\tx\n".encode("latin-1"))
    with pytest.raises(PairDataError) as error:
        read_msrp(path)
    assert str(error.value) == f"{path}:3: not valid UTF-8 (byte 0xe9 at byte 10 of the line); save the file as UTF-8."


def test_a_file_with_one_label_only_is_refused_before_encoding(tmp_path):
    path = write_msrp(tmp_path / "ones.tsv", [(1, "a0", "b0"), (1, "a1", "b1")])
    embedder = TableEmbedder([0.5, 0.2])
    with pytest.raises(PairDataError) as error:
        evaluate_pair_classification(embedder, path)
    assert str(error.value).startswith(f"{path}: every pair has Quality 1; average precision needs paraphrases (1)")
    assert embedder.calls == []
