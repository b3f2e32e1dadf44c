"""Searching an index: faiss's flat index equals the blocked top-k, IVF / HNSW / IVF-PQ keep most of the exact
top 10, an id prefix filters exactly, queries are encoded like the model's own query side, and an incomplete index or
another model is refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from index_support import sentences, write_corpus

import mmembed
from mmembed import testing
from mmembed.errors import ConfigError, DataError, RunStateError
from mmembed.eval.encoding import encode_side
from mmembed.index import Index, build

N_DOCS = 600


@pytest.fixture(scope="module")
def folder(qwen2_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    build(write_corpus(root / "corpus.jsonl", N_DOCS), root / "index", qwen2_path, shard_size=250)
    return root / "index"


@pytest.fixture(scope="module")
def queries():
    return sentences(40, seed=7)


@pytest.fixture(scope="module")
def query_vectors(folder, queries):
    return Index.load(folder, method="blocked").encode_queries(queries)


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def test_faiss_flat_equals_the_blocked_top_k(folder, queries):
    pytest.importorskip("faiss")
    flat, blocked = Index.load(folder, method="flat"), Index.load(folder, method="blocked", block_size=64)
    assert Index.load(folder).method == "flat"  # auto: faiss when installed
    ids_flat, scores_flat = flat.search(queries, 10)
    ids_blocked, scores_blocked = blocked.search(queries, 10)
    assert ids_flat == ids_blocked
    assert scores_flat.shape == (40, 10) and scores_flat.dtype == np.float32
    np.testing.assert_allclose(scores_flat, scores_blocked, atol=1e-5, rtol=0)
    rows, scores = _brute_force(blocked.vectors(), blocked.encode_queries(queries), 10)  # both are exact
    assert ids_blocked == [[blocked.ids[r] for r in row] for row in rows]
    np.testing.assert_allclose(scores_blocked, scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method, options, minimum", [("ivf", {"nlist": 16, "nprobe": 4}, 0.8), ("hnsw", {"ef_construction": 64}, 0.95),
                                                      ("pq", {"nlist": 4, "nprobe": 2, "pq_m": 16}, 0.6)])
def test_approximate_indexes_keep_most_of_the_exact_top_10(folder, query_vectors, method, options, minimum):
    pytest.importorskip("faiss")
    exact, _ = Index.load(folder, method="flat").search(query_vectors, 10)
    approximate = Index.load(folder, method=method, **options)
    found, scores = approximate.search(query_vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= minimum, recall
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    cached = list(folder.glob(f"faiss-{method}-*.index"))
    assert len(cached) == 1  # the trained index is saved and reused
    assert Index.load(folder, method=method, **options).search(query_vectors, 10)[0] == found


@pytest.mark.parametrize("method", ["flat", "blocked"])
def test_an_id_prefix_filters_exactly(folder, query_vectors, method):
    if method == "flat":
        pytest.importorskip("faiss")
    index = Index.load(folder, method=method)
    found, scores = index.search(query_vectors, 5, id_prefix="doc-b-")
    keep = np.array([i.startswith("doc-b-") for i in index.ids])
    rows, expected = _brute_force(index.vectors()[keep], query_vectors, 5)
    names = np.array(index.ids)[keep]
    assert found == [[names[r] for r in row] for row in rows]
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    ids, scores = index.search(query_vectors[:2], 10, id_prefix="doc-a-1")  # 37 records start so: k stays 10
    assert all(len(row) == 10 and all(i.startswith("doc-a-1") for i in row) for row in ids)
    ids, scores = index.search(query_vectors[:2], 10, id_prefix="nothing")
    assert ids == [[], []] and scores.shape == (2, 0)


def test_queries_are_encoded_as_the_model_encodes_its_query_side(folder, queries, qwen2_path):
    index = Index.load(folder, method="blocked")
    model = mmembed.load(str(qwen2_path))
    np.testing.assert_allclose(index.encode_queries(queries), encode_side(model, queries, "query"), atol=1e-6)
    assert index.manifest["model"]["spec"] == str(qwen2_path.resolve())
    with pytest.raises(ConfigError, match="got one string"):
        index.search("one string", 3)


def test_another_model_is_refused_for_the_queries(folder, tmp_path):
    other = mmembed.load(str(testing.build_tiny_qwen2(tmp_path / "other", seed=2)))
    with pytest.raises(RunStateError, match="is not the one index .* was built with"):
        Index.load(folder, model=other)


def test_an_incomplete_index_is_refused(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "shard-00001.npy").unlink()
    with pytest.raises(DataError, match=r"is incomplete: 1 of 3 shards are missing \(shard-00001"):
        Index.load(copy)
