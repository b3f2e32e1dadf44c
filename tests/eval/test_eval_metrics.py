"""Metrics with hand-computed values, a cross-check against trec_eval (pytrec_eval), and exact blocked top-k search."""

import math

import numpy as np
import pytest
import torch

from mmembed.eval.metrics import (
    average_precision,
    hit_at_k,
    mean,
    ndcg_at_k,
    precision_at_1,
    rank,
    recall_at_k,
    reciprocal_rank,
    spearman,
)
from mmembed.eval.search import NpyFile, topk_search, write_npy_header
from mmembed.eval.sts import STSTask, score_task


def test_spearman_hand_computed():
    # ranks (1,2,3,4) vs (1,3,2,4): sum d^2 = 2 -> 1 - 6*2 / (4*15) = 0.8
    assert spearman([0.1, 0.2, 0.3, 0.4], [1, 3, 2, 4]) == pytest.approx(80.0)
    # ties take average ranks: gold ranks (1.5, 1.5, 3) vs (1, 2, 3) -> pearson of ranks = sqrt(3)/2
    assert spearman([1, 2, 3], [0, 0, 1]) == pytest.approx(100 * math.sqrt(3) / 2)
    assert spearman([0.5, 0.5, 0.5], [1, 2, 3]) == 0.0  # constant predictions carry no ranking


def test_sts_all_setting_pools_the_subsets():
    # each subset is perfectly ranked (100), but pooled the ranks are (1,2,3,4) vs (3,4,1,2):
    # sum d^2 = 16 -> 1 - 6*16/60 = -0.6
    task = STSTask("STS12", "test", ["a"] * 4, ["b"] * 4, np.array([1.0, 2.0, 0.0, 0.5]), files=[],
                   subsets={"A": slice(0, 2), "B": slice(2, 4)})
    entry = score_task(task, np.array([0.1, 0.2, 0.3, 0.4]))
    assert entry["score"] == pytest.approx(-60.0)
    assert entry["subsets"] == {"A": pytest.approx(100.0), "B": pytest.approx(100.0)}
    assert entry["mean"] == pytest.approx(100.0) and entry["aggregation"] == "all"


def test_precision_at_1_breaks_ties_at_random_in_expectation():
    assert precision_at_1([0.5, 0.4, 0.2]) == 1.0
    assert precision_at_1([0.4, 0.5, 0.2]) == 0.0
    assert precision_at_1([0.5, 0.5, 0.2]) == 0.5
    assert precision_at_1([0.3] * 4) == 0.25  # a collapsed model: chance, although the gold is first
    assert precision_at_1([0.5, 0.5 + 1e-9, 0.1]) == 0.5  # float noise counts as a tie
    assert precision_at_1([0.2, 0.9, 0.9], gold=2) == 0.5
    assert precision_at_1([float("nan"), 0.1]) == 0.0


def test_ranked_list_metrics_hand_computed():
    ranking = ["a", "b", "c", "d"]
    assert average_precision(ranking, {"b", "d"}) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision(ranking, {"b", "d", "e"}) == pytest.approx((1 / 2 + 2 / 4) / 3)  # e never retrieved
    assert reciprocal_rank(ranking, {"c", "d"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranking, {"c"}, k=2) == 0.0
    assert recall_at_k(ranking, {"b", "d"}, 1) == 0.0
    assert recall_at_k(ranking, {"b", "d"}, 2) == 0.5
    assert recall_at_k(ranking, {"b", "d"}, 4) == 1.0
    assert hit_at_k(ranking, {"b", "d"}, 2) == 1.0 and hit_at_k(ranking, {"b", "d"}, 1) == 0.0
    # DCG = 1/log2(2) + 2/log2(4) = 2; IDCG = 2/log2(2) + 1/log2(3)
    assert ndcg_at_k(["a", "b", "c"], {"a": 1, "c": 2}, 3) == pytest.approx(2 / (2 + 1 / math.log2(3)))
    assert ndcg_at_k(["x"], {}, 10) == 0.0
    assert mean([1.0, None, 3.0]) == 2.0 and mean([]) is None


def test_metrics_equal_trec_eval_on_random_runs():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    qrels, run, ours = {}, {}, {"map": [], "ndcg_cut_10": [], "recip_rank": [], "recall_10": []}
    for q in range(30):
        docs = [f"d{j}" for j in range(40)]
        relevant = {d: int(rng.integers(1, 3)) for d in rng.choice(docs, int(rng.integers(1, 6)), replace=False)}
        scores = rng.random(len(docs))  # no ties
        qrels[f"q{q}"] = relevant
        run[f"q{q}"] = {d: float(s) for d, s in zip(docs, scores)}
        ranking = [docs[i] for i in np.argsort(-scores)]
        ours["map"].append(average_precision(ranking, relevant))
        ours["ndcg_cut_10"].append(ndcg_at_k(ranking, relevant, 10))
        ours["recip_rank"].append(reciprocal_rank(ranking, relevant))
        ours["recall_10"].append(recall_at_k(ranking, relevant, 10))
    reference = pytrec_eval.RelevanceEvaluator(qrels, set(ours)).evaluate(run)
    for measure, values in ours.items():
        np.testing.assert_allclose(values, [reference[f"q{q}"][measure] for q in range(30)], atol=1e-9)


def test_rank_orders_ties_at_random_but_reproducibly():
    scores = np.array([0.7, 0.7, 0.7, 0.7, 0.1])
    firsts = {int(rank(scores, seed)[0]) for seed in range(40)}
    assert firsts == {0, 1, 2, 3}  # every tied candidate can come first
    assert rank(scores, 5).tolist() == rank(scores, 5).tolist()
    assert rank(scores, 5)[-1] == 4
    assert rank([0.1, 0.9, 0.5], 0).tolist() == [1, 2, 0]


@pytest.mark.parametrize("block_size,query_block", [(7, 3), (64, 1024), (1000, 5)])
def test_topk_search_equals_full_matmul(block_size, query_block):
    torch.manual_seed(0)
    queries, pool = torch.randn(23, 16), torch.randn(301, 16)
    scores, index = topk_search(queries, pool, k=10, block_size=block_size, query_block=query_block)
    ref_scores, ref_index = (queries @ pool.T).topk(10, dim=1)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(index, ref_index)


def test_topk_search_streams_memmap_and_iterables(tmp_path):
    rng = np.random.default_rng(1)
    pool = rng.standard_normal((500, 8)).astype(np.float32)
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    np.save(tmp_path / "pool.npy", pool)
    mapped = np.load(tmp_path / "pool.npy", mmap_mode="r")
    with (tmp_path / "streamed.npy").open("wb") as f:
        write_npy_header(f, pool.shape)
        for i in range(0, 500, 128):
            f.write(pool[i:i + 128].tobytes())
    streamed = NpyFile(tmp_path / "streamed.npy")
    assert streamed.shape == (500, 8) and np.array_equal(streamed[10:20], pool[10:20])
    assert np.array_equal(np.load(tmp_path / "streamed.npy"), pool)
    ref = torch.from_numpy(queries @ pool.T).topk(5, dim=1)
    for source in (mapped, streamed, (pool[i:i + 33] for i in range(0, 500, 33))):
        scores, index = topk_search(queries, source, k=5, block_size=64)
        assert torch.equal(index, ref.indices)
        torch.testing.assert_close(scores, ref.values)
    scores, index = topk_search(queries, pool[:3], k=10)  # k larger than the pool: clipped
    assert index.shape == (4, 3)
    with pytest.raises(ValueError, match="dimension"):
        topk_search(queries, pool[:, :4], k=2)


def test_single_gold_metrics_in_expectation_over_ties():
    from mmembed.eval.metrics import gold_rank_range, single_gold_metric

    assert gold_rank_range([0.5, 0.9, 0.5, 0.5, 0.1]) == (2, 4)  # one better, tied with two others
    assert single_gold_metric([0.5, 0.9, 0.5, 0.5, 0.1], "hit@3") == pytest.approx(2 / 3)
    assert single_gold_metric([0.5, 0.9, 0.5, 0.5, 0.1], "mrr") == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert single_gold_metric([0.5, 0.9, 0.5, 0.5, 0.1], "ndcg@3") == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(4) + 0) / 3)
    for scores in ([0.5, 0.4, 0.2], [0.4, 0.5, 0.2], [0.3] * 4, [0.5, 0.5, 0.1]):
        assert single_gold_metric(scores, "precision@1") == precision_at_1(scores)
    assert single_gold_metric([0.2, 0.3, 0.1], "ndcg@5") == pytest.approx(1 / math.log2(3))
    with pytest.raises(ValueError, match="unknown metric"):
        single_gold_metric([0.1, 0.2], "map@3")
