"""The synthetic benchmark through the evaluators: a tiny random VLM is near chance on MMEB and M-BEIR."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmembed.cli import main


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    assert main(["synthetic", "-o", str(out), "--image-size", "56", "--eval-queries", "24", "--train-per-task", "4",
                 "--muco-images", "4", "--mbeir-queries", "12"]) == 0
    return out


def test_random_vlm_is_near_chance_on_synthetic_mmeb(synthetic, qwen2_vl_path, tmp_path):
    out = tmp_path / "report"
    assert main(["eval", "mmeb", "--model", str(qwen2_vl_path), "--dtype", "float32", "--data",
                 str(synthetic / "mmeb_eval"), "--image-root", str(synthetic), "-o", str(out)]) == 0
    report = json.loads((out / "mmeb.json").read_text())
    manifest = json.loads((synthetic / "manifest.json").read_text())
    tasks = report["tasks"]
    assert len(tasks) == 9 and not report["missing"]  # the folder's tasks.yaml is the task list
    assert report["summary"]["tasks_present"] == "9/9"
    diffs = []
    for task, entry in tasks.items():
        p, n = entry["chance"] / 100, entry["n"]
        assert entry["n"] == 24
        assert entry["chance"] == pytest.approx(100 * next(t["chance"] for t in manifest["tasks"]
                                                           if t["name"] == task))
        # a random network carries no information about the image: within 3.5 standard errors of chance
        assert abs(entry["score"] - entry["chance"]) <= 100 * 3.5 * np.sqrt(p * (1 - p) / n), task
        diffs.append((entry["score"] - entry["chance"]) / 100)
    assert abs(np.mean(diffs)) < 0.08  # and on average over the 9 tasks


def test_synthetic_mbeir_runs_with_both_pools(synthetic, qwen2_vl_path):
    import mmembed
    from mmembed.eval.mbeir import evaluate_mbeir

    model = mmembed.load(str(qwen2_vl_path), dtype="float32")
    report = evaluate_mbeir(model, synthetic / "mbeir", image_root=synthetic)
    assert len(report.tasks) == 8 and not report.missing
    for entry in report.tasks.values():
        assert entry["n"] == 12 and 0 <= entry["score"] <= 100
        assert entry["pool_size"] >= 12
    assert all(report.tasks[t]["pool_size"] > report.tasks[t.replace("global", "local")]["pool_size"]
               for t in report.tasks if "global" in t)
