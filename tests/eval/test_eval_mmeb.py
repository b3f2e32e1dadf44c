"""MMEB: Precision@1 with random tie-breaking, candidate caching, collapse flag, missing tasks, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mmembed
from mmembed.data.formats import DataError
from mmembed.eval.mmeb import MMEBDataError, evaluate_mmeb, load_task_list
from mmembed.testing import sample_images

LABELS = ["cat", "dog", "bird", "fish"]


def build_mmeb(root: Path, n_queries: int = 6) -> Path:
    """Two tasks in the MMEB-eval columns, gold first: image classification and text-to-image retrieval."""
    images = sample_images(6, size=(56, 56))
    (root / "images").mkdir(parents=True)
    for i, image in enumerate(images):
        image.save(root / "images" / f"{i}.png")
    with (root / "Cls.jsonl").open("w") as f:
        for i in range(n_queries):
            gold = LABELS[i % 4]
            f.write(json.dumps({"qry_inst": "<|image_1|> Represent the given image for classification",
                                "qry_text": "<|image_1|>\nRepresent the given image for classification\n",
                                "qry_img_path": f"images/{i % 6}.png", "tgt_inst": "",
                                "tgt_text": [gold] + [x for x in LABELS if x != gold], "tgt_img_path": [""] * 4}) + "\n")
    with (root / "T2I.jsonl").open("w") as f:
        for i in range(n_queries):
            order = [i % 6] + [j for j in range(6) if j != i % 6][:2]
            f.write(json.dumps({"qry_inst": "Find me an everyday image that matches the given caption:",
                                "qry_text": f"Find me an everyday image that matches the given caption: {LABELS[i % 4]}",
                                "qry_img_path": "", "tgt_inst": "",
                                "tgt_text": ["<|image_1|>\nRepresent the given image.\n"] * 3,
                                "tgt_img_path": [f"images/{j}.png" for j in order]}) + "\n")
    (root / "tasks.yaml").write_text("tasks:\n"
                                     "  - {name: Cls, meta_task: classification, distribution: IND}\n"
                                     "  - {name: T2I, meta_task: retrieval, distribution: OOD}\n"
                                     "  - {name: Absent, meta_task: vqa, distribution: OOD}\n")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_mmeb(tmp_path_factory.mktemp("mmeb"))


@pytest.fixture(scope="module")
def vlm(qwen2_vl_path):
    return mmembed.load(str(qwen2_vl_path), dtype="float32")


def _reference(model, root: Path, task: str) -> list[float]:
    """Direct computation: encode each query and its candidates, 1 when the gold is the strict best."""
    credits = []
    for line in (root / f"{task}.jsonl").read_text().splitlines():
        row = json.loads(line)

        def item(text, path):
            text = text.replace("<|image_1|>", "").strip()
            return {**({"text": text} if text else {}), **({"image": str(root / path)} if path else {})}

        q = model.encode([item(row["qry_text"], row["qry_img_path"])], normalize=True)[0]
        c = model.encode([item(t, p) for t, p in zip(row["tgt_text"], row["tgt_img_path"])], normalize=True)
        scores = c @ q
        credits.append(float(scores[0] > np.delete(scores, 0).max()))
    return credits


def test_scores_equal_direct_computation_and_candidates_are_cached(vlm, data):
    report = evaluate_mmeb(vlm, data, tasks_file=data / "tasks.yaml")
    for task in ("Cls", "T2I"):
        assert report.tasks[task]["score"] == pytest.approx(100 * np.mean(_reference(vlm, data, task)))
    assert report.tasks["Cls"]["chance"] == pytest.approx(25.0)
    assert report.tasks["T2I"]["meta_task"] == "retrieval" and report.tasks["T2I"]["distribution"] == "OOD"
    # 4 labels + 6 images are the distinct candidates; 6 image queries + 4 distinct caption queries
    assert report.protocol["encoded_candidates"] == 10 and report.protocol["encoded_queries"] == 10
    assert set(report.missing) == {"Absent"}
    assert report.summary["classification"] == report.tasks["Cls"]["score"]
    assert report.summary["vqa"] is None  # absent, not 0
    assert report.summary["overall"] is None  # a task of the list is missing: no benchmark-wide number
    assert report.summary["overall_present"] == pytest.approx(np.mean([report.tasks[t]["score"] for t in ("Cls", "T2I")]))
    assert report.summary["tasks_present"] == "2/3"


def test_constant_embeddings_score_chance_and_are_flagged(qwen2_vl_path, data):
    """A collapsed model (identity layers, one embedding row for every token) gives the same vector for every input:
    the reference argmax == 0 rule would give it 100%; here it gets chance and the report flags it."""
    model = mmembed.load(str(qwen2_vl_path), dtype="float32")
    with torch.no_grad():
        for name, p in model.backbone.model.named_parameters():
            if "language_model" in name and name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        embed = model.backbone.model.get_input_embeddings().weight
        embed.copy_(embed[0].expand_as(embed))
    vectors = model.encode(["a", "a different text", {"image": str(data / "images/0.png")}], normalize=True)
    assert np.abs(vectors - vectors[0]).max() < 1e-5
    report = evaluate_mmeb(model, data, tasks_file=data / "tasks.yaml")
    assert report.tasks["Cls"]["score"] == pytest.approx(25.0)
    assert report.tasks["T2I"]["score"] == pytest.approx(100 / 3)
    assert all(report.tasks[t]["collapsed"] for t in ("Cls", "T2I"))
    assert len(report.flags) == 2 and "chance level" in report.flags[0]
    assert "Warning" in report.to_markdown()


def test_parquet_snapshot_layout_reads_like_jsonl(vlm, data, tmp_path):
    """A hub snapshot keeps each task as <Task>/test-*.parquet; it gives the same rows and scores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "snapshot"
    for task in ("Cls", "T2I"):
        rows = [json.loads(line) for line in (data / f"{task}.jsonl").read_text().splitlines()]
        (root / task).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / task / "test-00000-of-00001.parquet")
    from_parquet = evaluate_mmeb(vlm, root, tasks_file=data / "tasks.yaml", image_root=data)
    from_jsonl = evaluate_mmeb(vlm, data, tasks_file=data / "tasks.yaml")
    assert from_parquet.scores() == from_jsonl.scores()
    assert all(p.endswith(".parquet") for p in from_parquet.data["files"])


def test_task_list_sample_and_errors(vlm, data, tmp_path):
    tasks = load_task_list()
    assert len(tasks) == 36
    assert sum(t.distribution == "IND" for t in tasks) == 20
    assert [sum(t.meta_task == m for t in tasks) for m in ("classification", "vqa", "retrieval", "grounding")] == \
        [10, 10, 12, 4]
    assert evaluate_mmeb(vlm, data).data["tasks_file"] == str(data / "tasks.yaml")  # the folder's own list
    report = evaluate_mmeb(vlm, data, tasks_file=data / "tasks.yaml", tasks=["Cls"], max_queries=3, seed=1)
    assert report.tasks["Cls"]["n"] == 3 and report.tasks["Cls"]["n_total"] == 6
    with pytest.raises(MMEBDataError, match="not in the task list"):
        evaluate_mmeb(vlm, data, tasks_file=data / "tasks.yaml", tasks=["Nope"])
    bad = build_mmeb(tmp_path / "bad")
    lines = (bad / "Cls.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["tgt_img_path"] = [""]
    lines[2] = json.dumps(row)
    (bad / "Cls.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(MMEBDataError, match=r"Cls.jsonl:3: tgt_text \(4\) and tgt_img_path \(1\)"):
        evaluate_mmeb(vlm, bad, tasks_file=bad / "tasks.yaml")
    (bad / "Cls.jsonl").write_text(json.dumps({**row, "tgt_img_path": ["../../etc/passwd"] * 4}) + "\n")
    with pytest.raises(DataError, match=r"Cls.jsonl:1 candidate 0: image path '../../etc/passwd' leaves the image root"):
        evaluate_mmeb(vlm, bad, tasks_file=bad / "tasks.yaml")


def test_an_interrupted_run_resumes_without_encoding_finished_tasks(vlm, data, tmp_path, monkeypatch):
    state = tmp_path / "mmeb.partial.json"
    full = evaluate_mmeb(vlm, data, resume_file=state)
    saved = json.loads(state.read_text())
    del saved["tasks"]["T2I"]  # as if the run stopped after the first task
    state.write_text(json.dumps(saved))
    encoded = []
    original = vlm.encode

    def counting(inputs, **kwargs):
        encoded.extend(inputs)
        return original(inputs, **kwargs)

    monkeypatch.setattr(vlm, "encode", counting)
    resumed = evaluate_mmeb(vlm, data, resume_file=state)
    assert resumed.scores() == full.scores()
    texts = {x.get("text") for x in encoded if isinstance(x, dict)}
    assert not texts & set(LABELS)  # the finished classification task was not encoded again ...
    assert any(t and t.startswith("Find me an everyday image") for t in texts)  # ... the unfinished one was
    with torch.no_grad():  # other weights: the saved results are not reused
        next(vlm.backbone.model.parameters()).add_(1.0)
    try:
        encoded.clear()
        evaluate_mmeb(vlm, data, resume_file=state)
        assert {x.get("text") for x in encoded if isinstance(x, dict)} & set(LABELS)
    finally:
        with torch.no_grad():
            next(vlm.backbone.model.parameters()).sub_(1.0)


def test_a_task_can_name_its_metric(vlm, data, tmp_path):
    """MMEB-V2 scores visual-document retrieval with nDCG@5, not hit@1: the task list carries the metric."""
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text("tasks:\n  - {name: T2I, meta_task: retrieval, distribution: OOD, metric: ndcg@2}\n")
    report = evaluate_mmeb(vlm, data, tasks_file=tasks_file)
    values = []
    for line in (data / "T2I.jsonl").read_text().splitlines():
        row = json.loads(line)
        q = vlm.encode([{"text": row["qry_text"]}], normalize=True)[0]
        c = vlm.encode([{"text": "Represent the given image.", "image": str(data / p)} for p in row["tgt_img_path"]],
                       normalize=True)
        position = 1 + int((c @ q > (c @ q)[0]).sum())
        values.append(1 / np.log2(position + 1) if position <= 2 else 0.0)
    assert report.tasks["T2I"]["metric"] == "ndcg@2"
    assert report.tasks["T2I"]["score"] == pytest.approx(100 * np.mean(values))
    assert report.tasks["T2I"]["chance"] == pytest.approx(100 * (1 + 1 / np.log2(3)) / 3)
    tasks_file.write_text("tasks:\n  - {name: T2I, meta_task: retrieval, distribution: OOD, metric: map}\n")
    with pytest.raises(MMEBDataError, match="unknown metric 'map'"):
        evaluate_mmeb(vlm, data, tasks_file=tasks_file)
