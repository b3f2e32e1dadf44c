"""M-BEIR: instructed queries, local and global pools, Recall@k (UniIR hit), resumable on-disk pool embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mmembed
from mmembed.eval.mbeir import MBEIRDataError, evaluate_mbeir, format_string, recall_k
from mmembed.testing import sample_images

INSTRUCTIONS = {("9", "text", "image"): "Retrieve an image that matches the caption",
                ("7", "image,text", "image"): "Find a fashion image like this one with the change"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_mbeir(root: Path) -> Path:
    images = sample_images(12, size=(56, 56))
    (root / "images").mkdir(parents=True)
    for i, image in enumerate(images):
        image.save(root / "images" / f"{i}.png")
    coco_pool = [{"did": f"9:{i}", "txt": None, "img_path": f"images/{i}.png", "modality": "image",
                  "src_content": None} for i in range(8)]
    coco_queries = [{"qid": f"9:{i}", "query_txt": f"a picture number {i}", "query_img_path": None,
                     "query_modality": "text", "query_src_content": None, "pos_cand_list": [f"9:{i}"],
                     "neg_cand_list": [], "task_id": 0} for i in range(8)]
    fiq_pool = [{"did": f"7:{i}", "txt": None, "img_path": f"images/{i}.png", "modality": "image",
                 "src_content": None} for i in range(4, 12)] + \
               [{"did": "7:100", "txt": "a plain red dress", "img_path": None, "modality": "text", "src_content": None}]
    fiq_queries = [{"qid": f"7:{i}", "query_txt": "is darker", "query_img_path": f"images/{i}.png",
                    "query_modality": "image,text", "query_src_content": None,
                    "pos_cand_list": [f"7:{4 + (i + 1) % 8}"], "neg_cand_list": [], "task_id": 7} for i in range(6)]
    _write_jsonl(root / "query/test/mbeir_mscoco_task0_test.jsonl", coco_queries)
    _write_jsonl(root / "query/test/mbeir_fashioniq_task7_test.jsonl", fiq_queries)
    _write_jsonl(root / "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl", coco_pool)
    _write_jsonl(root / "cand_pool/local/mbeir_fashioniq_task7_cand_pool.jsonl", fiq_pool)
    _write_jsonl(root / "cand_pool/global/mbeir_union_test_cand_pool.jsonl", coco_pool + fiq_pool)
    (root / "qrels/test").mkdir(parents=True)
    (root / "qrels/test/mbeir_mscoco_task0_test_qrels.txt").write_text(
        "".join(f"9:{i} 0 9:{i} 1 0\n" for i in range(8)))
    (root / "instructions").mkdir()
    (root / "instructions/query_instructions.tsv").write_text(
        "query_modality\tcand_modality\ttask\tdataset_id\tprompt_1\tprompt_2\n"
        + "".join(f"{q}\t{c}\tx\t{d}\t{p}\t\n" for (d, q, c), p in INSTRUCTIONS.items()))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_mbeir(tmp_path_factory.mktemp("mbeir"))


@pytest.fixture(scope="module")
def vlm(qwen2_vl_path):
    return mmembed.load(str(qwen2_vl_path), dtype="float32")


def _reference(model, root: Path, task: str, pool: str) -> dict[int, float]:
    """Brute force: embed every query and every pool candidate, rank all, hit@k."""
    queries = [json.loads(x) for x in (root / f"query/test/mbeir_{task}_test.jsonl").read_text().splitlines()]
    pool_file = (root / f"cand_pool/local/mbeir_{task}_cand_pool.jsonl" if pool == "local"
                 else root / "cand_pool/global/mbeir_union_test_cand_pool.jsonl")
    cands = [json.loads(x) for x in pool_file.read_text().splitlines()]

    def item(text, image):
        return {**({"text": text} if text else {}), **({"image": str(root / image)} if image else {})}

    c = model.encode([item(format_string(x["txt"]), x["img_path"]) for x in cands], normalize=True)
    hits = {1: [], 5: [], 10: []}
    for q in queries:
        instruction = INSTRUCTIONS[(q["qid"].split(":")[0], q["query_modality"], "image")]
        v = model.encode([item(format_string(f"{instruction} {q['query_txt']}"), q["query_img_path"])],
                         normalize=True)[0]
        ranking = [cands[j]["did"] for j in np.argsort(-(c @ v))]
        for k, values in hits.items():
            values.append(float(bool(set(ranking[:k]) & set(q["pos_cand_list"]))))
    return {k: 100 * float(np.mean(v)) for k, v in hits.items()}


def test_local_and_global_pools_equal_brute_force(vlm, data):
    report = evaluate_mbeir(vlm, data)
    assert set(report.tasks) == {f"{t} [{p}]" for t in ("fashioniq_task7", "mscoco_task0") for p in ("local", "global")}
    for task in ("mscoco_task0", "fashioniq_task7"):
        for pool in ("local", "global"):
            entry = report.tasks[f"{task} [{pool}]"]
            expected = _reference(vlm, data, task, pool)
            for k in (1, 5, 10):
                assert entry[f"recall@{k}"] == pytest.approx(expected[k]), (task, pool, k)
    assert report.tasks["fashioniq_task7 [local]"]["metric"] == "recall@10"
    assert report.tasks["mscoco_task0 [global]"]["metric"] == "recall@5"
    assert report.tasks["mscoco_task0 [global]"]["pool_size"] == 17
    assert report.summary["local_avg"] == pytest.approx(np.mean(
        [report.tasks[f"{t} [local]"]["score"] for t in ("mscoco_task0", "fashioniq_task7")]))
    assert recall_k("fashion200k_task0") == 10 and recall_k("cirr_task7") == 5


def test_on_disk_pool_embeddings_resume(vlm, data, tmp_path, monkeypatch):
    in_memory = evaluate_mbeir(vlm, data, pools=("global",))
    folder = tmp_path / "emb"
    first = evaluate_mbeir(vlm, data, pools=("global",), embeddings_dir=folder, block_size=5)
    assert first.scores() == pytest.approx(in_memory.scores())
    # an interrupted run: only the first 8 rows were written
    state = json.loads((folder / "global_test.progress.json").read_text())
    saved = np.load(folder / "global_test.npy")
    array = np.load(folder / "global_test.npy", mmap_mode="r+")
    array[8:] = 0
    array.flush()
    (folder / "global_test.progress.json").write_text(json.dumps({**state, "done": 8}))
    encoded = []
    original = vlm.encode
    monkeypatch.setattr(vlm, "encode", lambda inputs, **kw: encoded.extend(inputs) or original(inputs, **kw))
    resumed = evaluate_mbeir(vlm, data, pools=("global",), embeddings_dir=folder)
    assert resumed.scores() == pytest.approx(in_memory.scores())
    assert np.allclose(np.load(folder / "global_test.npy"), saved, atol=1e-6)
    pool = [json.loads(x) for x in (data / "cand_pool/global/mbeir_union_test_cand_pool.jsonl").read_text().splitlines()]
    images = [x["image"] for x in encoded if isinstance(x, dict) and "image" in x and "text" not in x]
    assert sorted(images) == sorted(str(data / c["img_path"]) for c in pool[8:] if c["img_path"])  # rows 8+ only
    # other weights: the saved embeddings are not reused
    encoded.clear()
    with torch.no_grad():
        next(vlm.backbone.model.parameters()).mul_(1.5)
    try:
        evaluate_mbeir(vlm, data, pools=("global",), embeddings_dir=folder)
        assert len([x for x in encoded if isinstance(x, dict) and "text" not in x]) == 16  # the whole pool again
    finally:
        with torch.no_grad():
            next(vlm.backbone.model.parameters()).div_(1.5)


def test_format_string_and_seeded_instruction_choice(vlm, data, tmp_path):
    assert format_string('  "a red dress\r" ') == "A red dress."
    assert format_string("is it blue?") == "Is it blue?"
    assert format_string(None) == "" and format_string("Done!") == "Done!"
    several = build_mbeir(tmp_path / "several")
    tsv = several / "instructions/query_instructions.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] += "\tShow me the picture described\tGive the image for this caption"
    tsv.write_text("\n".join(lines) + "\n")
    def query_texts(seed):
        texts = []
        original = vlm.encode
        vlm.encode = lambda inputs, **kw: texts.extend(x["text"] for x in inputs if "text" in x) or original(inputs,
                                                                                                              **kw)
        try:
            evaluate_mbeir(vlm, several, pools=("local",), tasks=["mscoco_task0"], seed=seed)
        finally:
            del vlm.encode
        return texts

    first, again, other = query_texts(0), query_texts(0), query_texts(1)
    assert first == again and first != other
    prompts = ("Retrieve an image that matches the caption", "Show me the picture described",
               "Give the image for this caption")
    assert all(t.startswith(prompts) and t.endswith(".") for t in first + other)
    assert len({next(p for p in prompts if t.startswith(p)) for t in first + other}) == 3
    alone = evaluate_mbeir(vlm, several, pools=("local",), tasks=["mscoco_task0"], seed=0).scores()
    both = evaluate_mbeir(vlm, several, seed=0).scores()  # other tasks and pools do not change a task's draws
    assert both["mscoco_task0 [local]"] == alone["mscoco_task0 [local]"]


def test_errors_name_the_record(vlm, data, tmp_path):
    bad = build_mbeir(tmp_path / "bad")
    path = bad / "query/test/mbeir_mscoco_task0_test.jsonl"
    rows = path.read_text().splitlines()
    row = json.loads(rows[1])
    row["query_modality"] = "image"
    rows[1] = json.dumps(row)
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(MBEIRDataError, match=r"mbeir_mscoco_task0_test.jsonl:2: no instruction for '9, image, image'"):
        evaluate_mbeir(vlm, bad, pools=("local",))
    assert evaluate_mbeir(vlm, bad, pools=("local",), instructions=False, tasks=["fashioniq_task7"]).tasks
