"""mmembed.eval.mteb: the Embedder in mteb's v2 encoder protocol, local BEIR / STS tasks, run by the real
``mteb.evaluate`` offline; every score is checked against a reference computed here from the embedder's own vectors."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest

pytest.importorskip("mteb")

import mmembed
from mmembed import testing
from mmembed.data.formats import DataError
from mmembed.errors import MMEmbedError
from mmembed.eval import mteb as mm

BATCH = 4  # small, so the reference encodes use the same batches as the adapter

QUERIES = [("q0", "where do cats sleep"), ("q1", "dogs that bark at night"), ("q2", "fresh bread in the morning"),
           ("q3", "a quiet lake in winter"), ("q4", "trains leaving the station")]
DOCS = [("d0", "", "The cat sleeps on the warm sofa."), ("d1", "Dogs", "A dog barks at the moon."),
        ("d2", "", "The baker sells fresh bread."), ("d3", "Winter", "Ice covers the silent lake."),
        ("d4", "", "The train departs at noon."), ("d5", "Cats", "Kittens nap in the sun."),
        ("d6", "", "Night dogs howl loudly."), ("d7", "", "Croissants and rolls for breakfast."),
        ("d8", "Lakes", "Frozen water and snow."), ("d9", "", "Railway platforms are busy."),
        ("d10", "", "Stock markets fell today."), ("d11", "Recipes", "How to cook rice.")]
QRELS = [("q0", "d0", 2), ("q0", "d5", 1), ("q1", "d1", 1), ("q1", "d6", 2), ("q2", "d2", 1), ("q2", "d7", 1),
         ("q3", "d3", 1), ("q3", "d8", 1), ("q4", "d4", 2), ("q4", "d9", 1), ("q4", "d10", 0)]
PAIRS = [("A man plays a guitar.", "A person plays music.", 4.2), ("A dog runs in a park.", "A cat sleeps.", 0.8),
         ("The sun is bright.", "It is a sunny day.", 3.9), ("Kids play football.", "Children play soccer.", 4.6),
         ("He reads a book.", "The stock market fell.", 0.1), ("A woman cooks.", "Someone prepares food.", 3.5),
         ("Birds fly south.", "Geese migrate in autumn.", 3.1), ("The car is red.", "An apple is red.", 1.4),
         ("I like tea.", "Coffee is hot.", 1.9), ("Rain falls.", "It is raining.", 4.8)]


# ------------------------------------------------------------------------------------------------ helpers
def write_beir(folder, queries=QUERIES, docs=None, qrels=QRELS):
    docs = text_docs() if docs is None else docs
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return folder


def text_docs():
    return [{"_id": i, "title": title, "text": text} for i, title, text in DOCS]


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a.astype(np.float64) @ b.astype(np.float64).T


def reference_retrieval(query_vectors, doc_vectors, query_ids, doc_ids, qrels):
    """nDCG@10 and Recall@3 (linear gains, log2 discounts: trec_eval's definitions) from cosine scores."""
    scores = cosine(query_vectors, doc_vectors)
    relevance: dict[str, dict[str, int]] = {}
    for q, d, s in qrels:
        relevance.setdefault(q, {})[d] = s
    ndcgs, recalls = [], []
    for qi, q in enumerate(query_ids):
        ranking = [doc_ids[j] for j in np.argsort(-scores[qi], kind="stable")]
        gains = relevance[q]
        dcg = sum(gains.get(d, 0) / math.log2(rank + 2) for rank, d in enumerate(ranking[:10]))
        ideal = sorted(gains.values(), reverse=True)[:10]
        ndcgs.append(dcg / sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal)))
        relevant = {d for d, g in gains.items() if g > 0}
        recalls.append(len(relevant & set(ranking[:3])) / len(relevant))
    return float(np.mean(ndcgs)), float(np.mean(recalls))


def assert_mteb_score(reported, reference):
    """mteb rounds retrieval metrics to 5 decimals: the reported value equals the rounded reference."""
    assert reported == pytest.approx(round(reference, 5), abs=1e-6), (reported, reference)


@pytest.fixture(scope="module")
def text_embedder(qwen2_path):
    return mmembed.load(qwen2_path)


@pytest.fixture(scope="module")
def vl_embedder(qwen2_vl_path):
    return mmembed.load(qwen2_vl_path)


# ------------------------------------------------------------------------------------------------ tests
def test_sts_and_retrieval_scores_equal_a_reference(tmp_path, monkeypatch, text_embedder):
    emb = text_embedder
    beir = write_beir(tmp_path / "mini_beir")
    sts = tmp_path / "mini_sts.tsv"
    sts.write_text("id\tsentence1\tsentence2\tscore\n" + "".join(f"{i}\t{a}\t{b}\t{s}\n"
                                                                 for i, (a, b, s) in enumerate(PAIRS)))
    out = tmp_path / "out"
    results = mm.evaluate(emb, [str(beir), str(sts)], output_folder=out, batch_size=BATCH)
    assert set(results) == {"mini_beir", "mini_sts"}

    # STS: Spearman (and Pearson) of the cosines of the embedder's own vectors against the gold scores
    from scipy.stats import pearsonr, spearmanr

    first = emb.encode([a for a, _, _ in PAIRS], batch_size=BATCH)
    second = emb.encode([b for _, b, _ in PAIRS], batch_size=BATCH)
    cosines = np.diag(cosine(first, second))
    gold = [s for _, _, s in PAIRS]
    sts_result = results["mini_sts"]
    assert sts_result["metric"] == "cosine_spearman"
    assert sts_result["main_score"] == pytest.approx(spearmanr(cosines, gold).statistic, abs=1e-6)
    assert sts_result["scores"]["test"]["cosine_spearman"] == pytest.approx(sts_result["main_score"], abs=1e-12)
    assert sts_result["scores"]["test"]["cosine_pearson"] == pytest.approx(pearsonr(cosines, gold).statistic,
                                                                           abs=1e-6)

    # retrieval: nDCG@10 / Recall@3 from the cosine ranking; a document is "title text" (BEIR / mteb convention)
    queries = [t for _, t in QUERIES]
    documents = [f"{title} {text}".strip() for _, title, text in DOCS]
    ndcg, recall = reference_retrieval(emb.encode(queries, batch_size=BATCH), emb.encode(documents, batch_size=BATCH),
                                       [q for q, _ in QUERIES], [d for d, _, _ in DOCS], QRELS)
    retrieval = results["mini_beir"]
    assert retrieval["metric"] == "ndcg_at_10"
    assert_mteb_score(retrieval["main_score"], ndcg)
    assert retrieval["scores"]["test"]["ndcg_at_10"] == retrieval["main_score"]
    assert_mteb_score(retrieval["scores"]["test"]["recall_at_3"], recall)
    assert 0 < ndcg < 1

    # mteb wrote its result files under output_folder/results/<model>/<revision>/
    meta = mm.as_encoder(emb).mteb_model_meta
    folder = out / "results" / meta.model_name_as_path() / meta.revision
    assert {p.name for p in folder.iterdir()} >= {"mini_beir.json", "mini_sts.json"}

    # overwrite=False reuses those files: nothing is encoded again
    def refuse(*args, **kwargs):
        raise AssertionError("encoded although the results are cached")

    monkeypatch.setattr(emb, "encode", refuse)
    again = mm.evaluate(emb, [str(beir), str(sts)], output_folder=out, batch_size=BATCH, overwrite=False)
    assert again.keys() == results.keys()
    for task, fresh in results.items():  # mteb stores scores rounded to 6 decimals
        assert again[task]["main_score"] == pytest.approx(fresh["main_score"], abs=1e-6)
        for metric, value in fresh["scores"]["test"].items():
            if isinstance(value, float):
                assert again[task]["scores"]["test"][metric] == pytest.approx(value, abs=1e-6, nan_ok=True), metric


def test_query_and_document_prompts_reach_the_model(tmp_path, text_embedder):
    emb = text_embedder
    beir = write_beir(tmp_path / "prompted")
    queries = [t for _, t in QUERIES]
    documents = [f"{title} {text}".strip() for _, title, text in DOCS]
    ids = [q for q, _ in QUERIES], [d for d, _, _ in DOCS]
    plain = mm.evaluate(emb, [str(beir)], batch_size=BATCH)["prompted"]["main_score"]
    saved = emb.prompts
    emb.prompts = {"query": "Q: ", "document": "D: "}
    try:
        prompted = mm.evaluate(emb, [str(beir)], batch_size=BATCH)["prompted"]["main_score"]
        reference, _ = reference_retrieval(emb.encode_queries(queries, batch_size=BATCH),
                                           emb.encode_documents(documents, batch_size=BATCH), *ids, QRELS)
    finally:
        emb.prompts = saved
    no_prompt, _ = reference_retrieval(emb.encode(queries, batch_size=BATCH), emb.encode(documents, batch_size=BATCH),
                                       *ids, QRELS)
    assert_mteb_score(prompted, reference)
    assert_mteb_score(plain, no_prompt)
    assert prompted != plain


def test_prompt_choice_follows_mteb_priority(tmp_path, text_embedder):
    from mteb.types import PromptType

    retrieval = mm.retrieval_task_from_beir(write_beir(tmp_path / "MyBeir"))
    sts = tmp_path / "pairs.jsonl"
    sts.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in PAIRS))
    sts_task = mm.sts_task_from_file(sts, name="MySTS")
    encoder = mm.MTEBEncoder(text_embedder)
    saved = text_embedder.prompts
    try:
        text_embedder.prompts = {"query": "q", "document": "d", "Retrieval-query": "rq", "MyBeir-document": "bd",
                                 "STS": "sts"}
        pick = encoder.prompt_for
        assert pick(retrieval.metadata, PromptType.query) == ("Retrieval-query", "rq")  # task type + type > type
        assert pick(retrieval.metadata, PromptType.document) == ("MyBeir-document", "bd")  # task + type first
        assert pick(sts_task.metadata, None) == ("STS", "sts")  # task type
        assert pick(sts_task.metadata, "query") == ("STS", "sts")  # a task type beats the bare prompt type
        text_embedder.prompts = {"MyBeir": "task", "Retrieval-query": "rq", "query": "q"}
        assert pick(retrieval.metadata, PromptType.query) == ("MyBeir", "task")  # task name > task type + type
        assert pick(retrieval.metadata, PromptType.document) == ("MyBeir", "task")  # a task-name key: both sides
        assert encoder.unused_prompt_keys() == ["MyBeir"]  # not a registry task: mteb would not validate it
        assert encoder.unused_prompt_keys(["MyBeir"]) == []  # ... but a local task of that name uses it
        text_embedder.prompts = {"Retrieval-query": "rq", "query": "q"}
        assert pick(retrieval.metadata, PromptType.document) == (None, "")  # nothing matches: no prompt
        text_embedder.prompts = {}
        assert pick(sts_task.metadata, None) == (None, "")
    finally:
        text_embedder.prompts = saved


def test_text_to_image_retrieval_equals_the_reference(tmp_path, vl_embedder):
    emb = vl_embedder
    images = testing.sample_images(6, size=(32, 32))
    folder = tmp_path / "t2i"
    (folder / "img").mkdir(parents=True)
    for i, image in enumerate(images):
        image.save(folder / "img" / f"{i}.png")
    captions = ["red noise", "green noise", "blue noise", "grey noise", "bright noise", "dark noise"]
    queries = [("q0", "a noisy picture"), ("q1", "random pixels"), ("q2", "a colourful square")]
    qrels = [("q0", "i0", 1), ("q0", "i3", 1), ("q1", "i1", 1), ("q2", "i2", 1), ("q2", "i5", 1)]
    write_beir(folder, queries=queries, qrels=qrels,
               docs=[{"_id": f"i{i}", "image": f"img/{i}.png"} for i in range(6)])
    # the same corpus with captions: text+image documents
    both = write_beir(tmp_path / "t2it", queries=queries, qrels=qrels,
                      docs=[{"_id": f"i{i}", "text": captions[i], "image": f"img/{i}.png"} for i in range(6)])
    (both / "img").mkdir()
    for i, image in enumerate(images):
        image.save(both / "img" / f"{i}.png")
    task = mm.retrieval_task_from_beir(folder)
    assert (task.metadata.type, task.metadata.category, task.metadata.modalities) == \
        ("Any2AnyRetrieval", "t2i", ["image", "text"])
    assert mm.retrieval_task_from_beir(both).metadata.category == "t2it"

    results = mm.evaluate(emb, [task, str(both)], batch_size=BATCH)
    query_vectors = emb.encode([t for _, t in queries], batch_size=BATCH)
    ids = [q for q, _ in queries], [f"i{i}" for i in range(6)]
    image_only, _ = reference_retrieval(query_vectors, emb.encode(images, batch_size=BATCH), *ids, qrels)
    paired, _ = reference_retrieval(query_vectors, emb.encode([{"text": c, "image": im} for c, im in
                                                               zip(captions, images)], batch_size=BATCH), *ids, qrels)
    assert_mteb_score(results["t2i"]["main_score"], image_only)
    assert_mteb_score(results["t2it"]["main_score"], paired)


def test_encode_takes_text_image_and_paired_batches(tmp_path, vl_embedder):
    emb = vl_embedder
    task = mm.sts_task_from_file(_pairs_file(tmp_path))
    images = testing.sample_images(3, size=(32, 32))
    encoder = mm.MTEBEncoder(emb)
    encoder.chunk_size = 2  # several embedder.encode calls: the rows still come back in order

    def run(batches):
        return encoder.encode(batches, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                              batch_size=BATCH)

    texts = run([{"text": ["a red square", "  "]}, {"text": ["photo.png", "blue"]}])  # "photo.png" stays text
    assert texts.shape == (4, emb.embedding_dim) and texts.dtype == np.float32
    assert np.allclose(texts[[0, 2, 3]], emb.encode([{"text": "a red square"}, {"text": "photo.png"}, "blue"]),
                       atol=1e-5)
    assert not texts[1].any()  # an empty text: a zero vector
    assert np.allclose(run([{"image": images[:2]}, {"image": images[2:]}]), emb.encode(images), atol=1e-5)
    paired = run([{"text": ["one", "two", ""], "image": images, "id": ["x", "y", "z"]}])
    expected = emb.encode([{"text": "one", "image": images[0]}, {"text": "two", "image": images[1]}, images[2]])
    assert np.allclose(paired, expected, atol=1e-5)
    with pytest.raises(MMEmbedError, match="audio"):
        run([{"audio": [{"array": np.zeros(4), "sampling_rate": 16000}]}])


def _pairs_file(folder):
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in PAIRS))
    return path


def test_model_meta(text_embedder, vl_embedder, qwen2_path):
    from mteb.models.model_meta import ScoringFunction
    from mteb.models.models_protocols import EncoderProtocol

    text_meta = mm.MTEBEncoder(text_embedder).mteb_model_meta
    assert text_meta.embed_dim == text_embedder.embedding_dim == 64
    assert text_meta.modalities == ["text"]
    assert text_meta.similarity_fn_name is ScoringFunction.COSINE
    assert text_meta.framework == ["PyTorch"]
    assert text_meta.name == f"local/{qwen2_path.name}"
    assert text_meta.n_parameters == sum(p.numel() for p in text_embedder.parameters())
    assert text_meta.max_tokens == text_embedder.backbone.max_length
    assert text_meta.use_instructions is False
    assert len(text_meta.revision) == 12
    vl_encoder = mm.MTEBEncoder(vl_embedder, name="me/tiny-vl", revision="r1")
    assert isinstance(vl_encoder, EncoderProtocol)
    vl_meta = vl_encoder.mteb_model_meta
    assert (vl_meta.name, vl_meta.revision, vl_meta.modalities) == ("me/tiny-vl", "r1", ["text", "image"])
    assert vl_meta.embed_dim == vl_embedder.embedding_dim
    saved = text_embedder.prompts
    try:
        text_embedder.prompts = {"query": "Q: "}
        prompted = mm.MTEBEncoder(text_embedder).mteb_model_meta
        assert prompted.use_instructions is True and prompted.revision != text_meta.revision
    finally:
        text_embedder.prompts = saved
    sims = mm.MTEBEncoder(text_embedder).similarity(np.eye(2, 3), np.array([[2.0, 0, 0]]))
    assert np.allclose(np.asarray(sims), [[1.0], [0.0]])


def test_task_names_and_paths(text_embedder):
    sts12, = mm.resolve_tasks(["STS12"])
    assert sts12.metadata.name == "STS12" and sts12.metadata.main_score == "cosine_spearman"
    assert "ArguAna" in [t.metadata.name for t in mm.resolve_tasks(["MTEB(eng, v2)"])]  # a benchmark: its tasks
    with pytest.raises(mm.UnknownTaskError, match="unknown mteb task 'STSBenchmrk'.*Close matches: STSBenchmark"):
        mm.evaluate(text_embedder, ["STSBenchmrk"])
    with pytest.raises(mm.TaskFileError, match="no such file"):
        mm.evaluate(text_embedder, ["./missing/pairs.tsv"])


def test_registry_task_without_offline_data(tmp_path, monkeypatch, text_embedder):
    import datasets
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    # empty caches: the test never depends on (or runs) a dataset someone cached on this machine
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(mm.TaskDataUnavailableError, match=r"mteb task 'STS12'.*mteb/sts12-sts.*not available offline"):
        mm.evaluate(text_embedder, ["STS12"])


def test_bad_lines_name_file_and_line(tmp_path):
    beir = write_beir(tmp_path / "beir")
    with (beir / "corpus.jsonl").open("a") as handle:
        handle.write('{"_id": "d99", "text": "ok"}\n{"_id": "d100", "text": broken}\n')
    with pytest.raises(DataError, match=rf"corpus.jsonl:{len(DOCS) + 2}: invalid JSON"):
        mm.retrieval_task_from_beir(beir)

    beir2 = write_beir(tmp_path / "beir2")
    (beir2 / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\n")
    with pytest.raises(mm.TaskFileError, match=r"test.tsv:3: expected 3 tab-separated fields"):
        mm.retrieval_task_from_beir(beir2)
    with pytest.raises(mm.TaskFileError, match=r"qrels/dev.tsv is missing"):
        mm.retrieval_task_from_beir(beir2, split="dev")

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\thigh\n")
    with pytest.raises(mm.TaskFileError, match=r"pairs.tsv:3: score 'high' is not a number"):
        mm.sts_task_from_file(tsv)
    tsv.write_text("text_a\ttext_b\tlabel\na\tb\t1\n")
    with pytest.raises(mm.TaskFileError, match=r"pairs.tsv:1: the header must name"):
        mm.sts_task_from_file(tsv)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "c", "score": 2}\n')
    with pytest.raises(mm.TaskFileError, match=r"pairs.jsonl:2: missing sentence2"):
        mm.sts_task_from_file(jsonl)


def test_sts_file_formats_read_alike(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("score\tsentence1\tsentence2\n" + "".join(f"{s}\t{a}\t{b}\n" for a, b, s in PAIRS))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in PAIRS))
    tasks = [mm.local_task(tsv), mm.local_task(jsonl)]
    for task in tasks:
        task.load_data()
    assert [t.metadata.name for t in tasks] == ["a", "b"]
    assert tasks[0].dataset["test"].to_dict() == tasks[1].dataset["test"].to_dict()
    assert (tasks[0].min_score, tasks[0].max_score) == (0.1, 4.8)
    assert tasks[0].metadata.main_score == "cosine_spearman"


def test_cli_runs_local_retrieval_and_sts_through_mteb(tmp_path, text_embedder, qwen2_path):
    """`mmembed eval mteb --tasks <BEIR folder> --tasks <STS file>` through the real mteb, offline."""
    from mmembed.cli import main

    beir = write_beir(tmp_path / "cli_beir")
    sts = _pairs_file(tmp_path)
    out = tmp_path / "report"
    assert main(["eval", "mteb", "--model", str(qwen2_path), "--dtype", "float32", "--tasks", str(beir),
                 "--tasks", str(sts), "--batch-size", str(BATCH), "-o", str(out)]) == 0
    saved = json.loads((out / "mteb.json").read_text())
    direct = mm.evaluate(text_embedder, [str(beir), str(sts)], batch_size=BATCH)
    assert set(saved["tasks"]) == {"cli_beir", "pairs"}
    for task, result in direct.items():
        assert saved["tasks"][task]["score"] == pytest.approx(100 * result["main_score"], abs=1e-4)
        assert saved["tasks"][task]["metric"] == result["metric"]
    assert saved["model"]["mteb_revision"] == mm.as_encoder(text_embedder).mteb_model_meta.revision
    assert (out / "mteb" / "results").is_dir() and (out / "mteb.png").is_file()
    assert str(sts) in saved["data"]["files"]


def test_revision_follows_every_weight(qwen2_path):
    """Two adapters on one base must not share mteb's cached results: any parameter changes the revision."""
    import torch

    model = mmembed.load(str(qwen2_path), dtype="float32")
    before = mm.model_revision(model)
    params = list(model.backbone.model.parameters())
    with torch.no_grad():
        params[len(params) // 2].add_(1e-3)  # a middle layer, as a LoRA update would be
    assert mm.model_revision(model) != before
