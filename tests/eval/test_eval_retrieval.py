"""Local retrieval (BEIR layout) against trec_eval on the same rankings, and TREC-QA MAP / MRR@10."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import mmembed
from mmembed.cli import main
from mmembed.eval.metrics import average_precision, reciprocal_rank
from mmembed.eval.retrieval import RetrievalDataError, evaluate_retrieval, evaluate_trecqa, read_beir, read_trecqa

SHARED_TRECQA = Path(__file__).resolve().parents[3] / "shared" / "data" / "trecqa" / "dev.csv"
DOCS = ["Paris is the capital of France.", "The cat sleeps on the sofa.", "Stocks fell on Monday.",
        "A recipe for onion soup.", "Dogs are loyal animals.", "The Eiffel tower is in Paris.",
        "Guitars have six strings.", "Bread is baked in an oven."]


def build_beir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": "Doc" if i % 2 else "", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    queries = ["capital of France", "pets", "markets", "cooking", "music", "unjudged query"]
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n"
                                                for i, t in enumerate(queries)))
    (root / "qrels").mkdir()
    qrels = [("q0", "d0", 2), ("q0", "d5", 1), ("q1", "d1", 1), ("q1", "d4", 1), ("q2", "d2", 1), ("q3", "d3", 1),
             ("q3", "d7", 1), ("q4", "d6", 1)]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                             "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return root


@pytest.fixture(scope="module")
def model(qwen2_path):
    return mmembed.load(str(qwen2_path), dtype="float32", prompts={"query": "Query: ", "document": "Passage: "})


def test_beir_retrieval_equals_trec_eval(model, tmp_path):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    folder = build_beir(tmp_path / "toy")
    report = evaluate_retrieval(model, folder)
    entry = report.tasks["toy"]
    queries, corpus, qrels = read_beir(folder)
    assert set(queries) == {"q0", "q1", "q2", "q3", "q4"}  # the unjudged query is left out, as BEIR does
    assert corpus["d1"] == "Doc The cat sleeps on the sofa." and corpus["d0"] == DOCS[0]
    qv = model.encode_queries([queries[q] for q in queries], normalize=True)
    dv = model.encode_documents(list(corpus.values()), normalize=True)
    run = {q: {d: float(s) for d, s in zip(corpus, dv @ v)} for q, v in zip(queries, qv)}
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "map", "recall_5"}).evaluate(run)
    assert entry["score"] == pytest.approx(100 * np.mean([r["ndcg_cut_10"] for r in reference.values()]), abs=1e-6)
    assert entry["map"] == pytest.approx(100 * np.mean([r["map"] for r in reference.values()]), abs=1e-6)
    assert entry["recall@5"] == pytest.approx(100 * np.mean([r["recall_5"] for r in reference.values()]), abs=1e-6)
    assert entry["n"] == 5 and entry["corpus_size"] == 8


def test_beir_errors(model, tmp_path):
    folder = build_beir(tmp_path / "bad")
    with (folder / "qrels" / "test.tsv").open("a") as f:
        f.write("q1\tmissing-doc\t1\n")
    with pytest.raises(RetrievalDataError, match=r"test.tsv:10: document missing-doc is not in corpus.jsonl"):
        read_beir(folder)
    (folder / "corpus.jsonl").write_text('{"_id": "d0"}\n')
    with pytest.raises(RetrievalDataError, match=r"corpus.jsonl:1: missing field\(s\) \['text'\]"):
        read_beir(folder)


def test_trecqa_map_mrr_and_clean_setting(model, tmp_path):
    path = tmp_path / "qa.csv"
    rows = [("Where is the Eiffel tower?", 1, DOCS[5]), ("Where is the Eiffel tower?", 0, DOCS[1]),
            ("Where is the Eiffel tower?", 0, DOCS[2]), ("Where is the Eiffel tower?", 1, DOCS[0]),
            ("What do cats do?", 0, DOCS[6]), ("What do cats do?", 1, DOCS[1]), ("What do cats do?", 0, DOCS[7]),
            ("No answer here?", 0, DOCS[3]), ("All answers?", 1, DOCS[4]), ("All answers?", 1, DOCS[6])]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["qtext", "label", "atext"])
        writer.writerows(rows)
    report = evaluate_trecqa(model, path)
    entry = report.tasks["TREC-QA"]
    assert entry["n"] == 2 and report.protocol["dropped_no_answer"] == 1 and report.protocol["dropped_all_answers"] == 1
    aps, rrs = [], []
    for question, sentences, labels in read_trecqa(path)[:2]:
        q = model.encode_queries([question], normalize=True)[0]
        ranking = np.argsort(-(model.encode_documents(sentences, normalize=True) @ q)).tolist()
        relevant = {i for i, label in enumerate(labels) if label}
        aps.append(average_precision(ranking, relevant))
        rrs.append(reciprocal_rank(ranking, relevant, 10))
    assert entry["map"] == pytest.approx(100 * np.mean(aps)) and entry["mrr@10"] == pytest.approx(100 * np.mean(rrs))
    raw = evaluate_trecqa(model, path, clean=False).tasks["TREC-QA"]
    assert raw["n"] == 3 and raw["map"] == pytest.approx((2 * entry["map"] + 100) / 3)


@pytest.mark.skipif(not SHARED_TRECQA.is_file(), reason="../shared/data/trecqa not present")
def test_trecqa_cli_on_shared_dev(qwen2_path, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "trecqa", "--model", str(qwen2_path), "--data", str(SHARED_TRECQA.parent),
                 "--dtype", "float32", "-o", str(out)]) == 0
    saved = json.loads((out / "trecqa.json").read_text())
    questions = read_trecqa(SHARED_TRECQA)
    kept = [q for q in questions if any(q[2]) and not all(q[2])]
    assert saved["tasks"]["TREC-QA"]["n"] == len(kept) and 0 < len(kept) <= 81
    assert 0 < saved["tasks"]["TREC-QA"]["map"] <= 100


@pytest.mark.parametrize("name, line, message", [
    ("corpus.jsonl", {"_id": "d9", "text": 7}, "corpus.jsonl:9: 'text' must be a string, got int"),
    ("corpus.jsonl", {"_id": "d9", "title": "", "text": " "}, "corpus.jsonl:9: document 'd9' has neither text nor"),
    ("corpus.jsonl", {"_id": "d2", "text": "again"}, "corpus.jsonl:9: duplicate _id 'd2' (first at {folder}"),
    ("queries.jsonl", {"_id": "q9", "text": ""}, "queries.jsonl:7: query 'q9' has an empty text"),
    ("queries.jsonl", b'{"_id": "q9", "text": "caf\xe9"}', "queries.jsonl:7: not valid UTF-8 (byte 0xe9"),
    ("qrels/test.tsv", "q1\td2\tinf", "qrels/test.tsv:10: score 'inf' is not a finite number"),
    ("qrels/test.tsv", "q1\td2\tnan", "qrels/test.tsv:10: score 'nan' is not a finite number"),
])
def test_beir_bad_lines_name_file_and_line(tmp_path, name, line, message):
    folder = build_beir(tmp_path / "beir")
    data = line if isinstance(line, bytes) else (json.dumps(line) if isinstance(line, dict) else line).encode()
    with (folder / name).open("ab") as f:
        f.write(data + b"\n")
    with pytest.raises(RetrievalDataError) as error:
        read_beir(folder)
    assert str(error.value).startswith(f"{folder}/{message.format(folder=folder)}"), str(error.value)


def test_trecqa_bad_rows_name_the_line_even_after_multiline_fields(tmp_path):
    path = tmp_path / "qa.csv"
    ok = 'qtext,label,atext\nWhere?,1,"A sentence\nthat spans two lines."\nWhere?,0,Elsewhere.\n'
    path.write_text(ok + "Where?,0,\n")
    with pytest.raises(RetrievalDataError) as error:
        read_trecqa(path)
    assert str(error.value).startswith(f"{path}:5: empty question or answer sentence")
    path.write_bytes(ok.encode() + b"Where?,0,\xff\n")
    with pytest.raises(RetrievalDataError) as error:
        read_trecqa(path)
    assert str(error.value).startswith(f"{path}:5: not valid UTF-8 (byte 0xff at byte 10 of the line)")
    path.write_text(ok + "Where?,2,Bad label.\n")
    with pytest.raises(RetrievalDataError, match=r"qa.csv:5: label '2' must be 0 or 1"):
        read_trecqa(path)
    path.write_text(ok)
    assert read_trecqa(path) == [("Where?", ["A sentence\nthat spans two lines.", "Elsewhere."], [1, 0])]


def test_one_beir_reader_serves_local_retrieval_and_mteb_tasks(tmp_path):
    """``read_beir`` and mteb's local tasks read through ``eval.beir.read_beir_folder``: the same entries; the two
    differ only in their policy (images, and an unknown id in qrels: an error here, skipped and warned for mteb)."""
    from mmembed.eval.beir import BeirEntry, read_beir_folder

    folder = build_beir(tmp_path / "beir")
    data = read_beir_folder(folder, error=RetrievalDataError)
    queries, corpus, qrels = read_beir(folder)
    assert data.corpus["d1"] == BeirEntry(f"{folder}/corpus.jsonl:2", DOCS[1], "Doc", None)
    assert corpus == {d: f"{e.title} {e.text}".strip() for d, e in data.corpus.items()}
    assert qrels == data.qrels
    assert list(queries) == [q for q in data.queries if q in qrels] == [f"q{i}" for i in range(5)]
    with (folder / "qrels" / "test.tsv").open("a") as f:
        f.write("q1\tmissing-doc\t1\n")
    with pytest.raises(RetrievalDataError) as error:
        read_beir_folder(folder, error=RetrievalDataError)
    assert str(error.value) == f"{folder}/qrels/test.tsv:10: document missing-doc is not in corpus.jsonl."
    lenient = read_beir_folder(folder, unknown_ids="skip")
    assert lenient.skipped == [f"{folder}/qrels/test.tsv:10"] and lenient.qrels == qrels
    (folder / "cat.png").write_bytes(b"png")
    with (folder / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "img", "image": "cat.png"}) + "\n")
    assert read_beir_folder(folder, images=True, unknown_ids="skip").corpus["img"] == BeirEntry(
        f"{folder}/corpus.jsonl:9", None, "", str((folder / "cat.png").resolve()))
    with pytest.raises(RetrievalDataError, match=r"corpus.jsonl:9: missing field\(s\) \['text'\] \(a BEIR corpus "):
        read_beir(folder)
