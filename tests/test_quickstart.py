"""The Quickstart's job (``accelerate launch recipes/grace.py``, bundled config) runs from a clone with nothing
beside it: its training and held-apart evaluation data ship in ``recipes/data/wordnet`` (built from WordNet 3.0)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mmembed
from mmembed.data.formats import read_grace
from mmembed.eval.retrieval import read_beir
from mmembed.rationale import restatement_stats

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "data" / "wordnet"
SOURCE = ROOT.parent / "shared" / "data" / "wordnet" / "definitions.jsonl"
BIN = Path(sys.executable).parent


def _clone(target: Path) -> Path:
    """The files a fresh clone has: tracked files and new files git does not ignore (no .venv, no out/)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not copied
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bundled_config_reads_only_shipped_files():
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "grace.yaml").read_text())
    paths = {k: v for k, v in config.items() if isinstance(v, str) and "/" in v}
    assert paths == {"train_file": "recipes/data/wordnet/train.jsonl", "eval_retrieval_dir": "recipes/data/wordnet/eval",
                     "output_dir": "out/grace"}
    assert "shared" not in (ROOT / "recipes" / "grace.py").read_text()
    assert not any(".." in str(v) or "shared" in str(v) for v in config.values())


def test_shipped_data_is_small_licensed_and_held_apart():
    sizes = {name: len(data) for name, data in _files(DATA).items()}
    assert set(sizes) == {"LICENSE", "train.jsonl", "eval/corpus.jsonl", "eval/queries.jsonl", "eval/qrels/test.tsv"}
    assert sum(sizes.values()) < 1_000_000 and max(sizes.values()) < 2_000_000
    assert "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in (DATA / "LICENSE").read_text()
    rows = read_grace(DATA / "train.jsonl")
    queries, corpus, qrels = read_beir(DATA / "eval")
    assert len(rows) == 1000 and all("negative" in r and r["negative"] != r["text"] for r in rows)
    assert len(queries) == len(corpus) == 135 and all(qrels[q] == {q[2:]: 1} for q in queries)
    train_senses = {r["source"].split(":")[1] for r in _jsonl(DATA / "train.jsonl")}
    assert not train_senses & set(corpus)
    train_texts = {r[k] for r in rows for k in ("query", "text", "negative")}
    assert train_texts.isdisjoint(set(queries.values()) | set(corpus.values()))


@pytest.mark.skipif(not SOURCE.is_file(), reason="needs ../shared/data/wordnet/definitions.jsonl")
def test_shipped_data_rebuilds_byte_for_byte_and_shares_no_lemma(tmp_path):
    spec = importlib.util.spec_from_file_location("build_wordnet", ROOT / "recipes" / "data" / "build_wordnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = module.build(SOURCE, tmp_path / "wordnet")
    assert counts == {"train_rows": 1000, "eval_queries": 135, "eval_corpus": 135}
    assert _files(tmp_path / "wordnet") == _files(DATA)
    lemmas = {}
    for record in _jsonl(SOURCE):
        lemmas[record["synset"]] = {x.lower() for x in record["lemmas"]}
    train = {r["source"].split(":")[1] for r in _jsonl(DATA / "train.jsonl")}
    held = {r["_id"] for r in _jsonl(DATA / "eval" / "corpus.jsonl")}
    assert set().union(*(lemmas[s] for s in train)).isdisjoint(set().union(*(lemmas[s] for s in held)))


def test_quickstart_runs_from_a_clone_without_shared(tmp_path, qwen2_path):
    clone = _clone(tmp_path / "mmembed")
    assert not (clone.parent / "shared").exists() and not (clone / "recipes" / "data" / "wordnet" / "eval").is_symlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(clone)}  # the clone's own package, not the editable install's
    run = subprocess.run([str(BIN / "accelerate"), "launch", "recipes/grace.py", "--model_name_or_path", str(qwen2_path),
                          "--max_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "4",
                          "--max_completion_length", "4", "--disable_tqdm", "true"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    summary = json.loads([line for line in run.stdout.splitlines() if line.startswith('{"train_seconds')][-1])
    assert summary["steps"] == 2 and summary["model"] == "out/grace/final"
    for key in ("retrieval_mrr10", "retrieval_acc1"):
        assert (f"{key} x100 on held-apart data: {summary[key + '_before']:.2f} (untrained) -> {summary[key]:.2f} "
                f"(trained)") in run.stderr
    # the printed score is the evaluator's: `mmembed eval retrieval` on the saved model gives the same numbers
    cli = subprocess.run([str(BIN / "mmembed"), "eval", "retrieval", "--model", "out/grace/final", "--data",
                          "recipes/data/wordnet/eval", "--batch-size", "16", "--output", str(tmp_path / "report")],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stderr[-3000:]
    task = json.loads((tmp_path / "report" / "retrieval.json").read_text())["tasks"]["eval"]
    assert (round(task["mrr@10"], 2), round(task["recall@1"], 2)) == (summary["retrieval_mrr10"],
                                                                       summary["retrieval_acc1"])
    # the printed restatement share is that of the saved model's rationales for the held-apart queries
    texts = list(read_beir(clone / "recipes" / "data" / "wordnet" / "eval")[0].values())
    _, rationales = mmembed.load(str(clone / "out" / "grace" / "final")).encode(texts, batch_size=16,
                                                                                  return_rationales=True)
    stats = restatement_stats(rationales, texts)
    assert summary["restatement_pct"] == round(100 * stats["restatement_share"], 2)
    assert summary["rationale_words"] == round(stats["rationale_words"], 1) and "restatement_pct_before" in summary
