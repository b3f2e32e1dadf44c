"""Evaluators on several processes: 2 gloo processes give exactly the scores of 1 process on STS, MMEB, M-BEIR and
mteb (each encoding split: every process encodes about half the inputs), and ``mmembed eval`` under
``torch.distributed.run`` prints and writes the report of one process, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from support import free_port

import mmembed
from mmembed.cli import main
from mmembed.distributed import Processes, encode_sharded, gather_shares, processes, sharded_encoding
from mmembed.errors import InputError

WORDS = ["a", "man", "woman", "child", "dog", "cat", "bird", "plays", "runs", "sleeps", "reads", "cooks", "eats",
         "near", "under", "the", "old", "red", "small", "park", "river", "kitchen", "guitar", "book", "ball", "tree",
         "market", "falls", "rises", "quietly", "today"]
SUITES = ("sts", "mmeb", "mbeir", "mteb")
DOCS = ["The cat sleeps on the warm sofa.", "A dog barks at the moon.", "The baker sells fresh bread.",
        "Ice covers the silent lake.", "The train departs at noon.", "Kittens nap in the sun.",
        "Night dogs howl loudly.", "Croissants and rolls for breakfast.", "Frozen water and snow."]
QUERIES = ["where do cats sleep", "dogs that bark at night", "fresh bread in the morning", "a quiet lake in winter"]


def _sentences(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, rng.integers(3, 14))) for _ in range(n)]


def build_senteval(root: Path) -> Path:
    """A SentEval root holding STS-B dev and test (40 pairs each)."""
    rng = np.random.default_rng(0)
    stsb = root / "STS" / "STSBenchmark"
    stsb.mkdir(parents=True)
    for split in ("dev", "test"):
        first, second = _sentences(rng, 40), _sentences(rng, 40)
        (stsb / f"sts-{split}.csv").write_text("".join(
            f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{a}\t{b}\n"
            for i, (a, b) in enumerate(zip(first, second))))
    return root


def build_data(root: Path) -> Path:
    """A SentEval root, the synthetic MMEB and M-BEIR sets, a BEIR folder and an STS file."""
    rng = np.random.default_rng(1)
    build_senteval(root / "senteval")
    assert main(["synthetic", "-o", str(root / "synthetic"), "--image-size", "56", "--eval-queries", "6",
                 "--candidates", "4", "--train-per-task", "1", "--muco-images", "1", "--mbeir-queries", "4"]) == 0
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                               for i, t in enumerate(DOCS)))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n"
                                                for i, t in enumerate(QUERIES)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                             + "".join(f"q{i}\td{j}\t1\n" for i in range(4) for j in (i, i + 5)))
    (root / "pairs.jsonl").write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": float(s)}) + "\n"
                                              for a, b, s in zip(_sentences(rng, 12), _sentences(rng, 12),
                                                                 rng.uniform(0, 5, 12))))
    return root


def _counting(embedder: mmembed.Embedder, counts: dict[str, int]) -> mmembed.Embedder:
    """``embedder`` counting the inputs of its encode calls ("inputs") and those this process encoded ("mine")."""
    encode = embedder.encode

    def counted(inputs, **kwargs):
        out = encode(inputs, **kwargs)
        counts["inputs"] += len(inputs)
        counts["mine"] += len(out[0]) if kwargs.get("share") is not None else len(inputs)
        return out

    embedder.encode = counted
    return embedder


def run_suites(root: Path, text_model: str, vl_model: str) -> dict[str, dict]:
    """Each suite's report (as JSON gives it back) and its encode counts, on this process."""
    from mmembed.eval.mbeir import evaluate_mbeir
    from mmembed.eval.mmeb import evaluate_mmeb
    from mmembed.eval.mteb import mteb_report
    from mmembed.eval.sts import evaluate_sts

    text, vl = mmembed.load(text_model, dtype="float32"), mmembed.load(vl_model, dtype="float32")
    synthetic = root / "synthetic"
    runs = {"sts": lambda m: evaluate_sts(m, root / "senteval", tasks=["STSBenchmark"], batch_size=8),
            "mmeb": lambda m: evaluate_mmeb(m, synthetic / "mmeb_eval", image_root=synthetic, batch_size=4),
            "mbeir": lambda m: evaluate_mbeir(m, synthetic / "mbeir", image_root=synthetic, batch_size=4),
            "mteb": lambda m: mteb_report(m, [str(root / "beir"), str(root / "pairs.jsonl")], batch_size=4)}
    out = {}
    for suite, run in runs.items():
        counts = {"inputs": 0, "mine": 0}
        model = _counting(text if suite in ("sts", "mteb") else vl, counts)
        report = run(model)
        out[suite] = {"report": json.loads(json.dumps(report.to_dict(), default=str)), "counts": counts}
        del model.encode  # the model's own encode again
    return out


def _worker(rank: int, world: int, port: int, root: str, text_model: str, vl_model: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    with processes() as procs, sharded_encoding(procs):
        results = run_suites(Path(root), text_model, vl_model)
    (Path(root) / f"results.{rank}.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, qwen2_path, qwen2_vl_path):
    """``(one process's results, [the two processes' results])``."""
    pytest.importorskip("mteb")
    root = build_data(tmp_path_factory.mktemp("distributed"))
    mp.start_processes(_worker, args=(2, free_port(), str(root), str(qwen2_path), str(qwen2_vl_path)), nprocs=2,
                       start_method="spawn", join=True)
    two = [json.loads((root / f"results.{rank}.json").read_text()) for rank in (0, 1)]
    return run_suites(root, str(qwen2_path), str(qwen2_vl_path)), two


@pytest.mark.parametrize("suite", SUITES)
def test_two_processes_score_exactly_as_one(runs, suite):
    one, two = runs
    for rank in (0, 1):
        for key in ("tasks", "summary", "missing", "flags", "protocol"):
            assert two[rank][suite]["report"][key] == one[suite]["report"][key], (suite, rank, key)
    assert one[suite]["report"]["tasks"] and all(t["score"] is not None for t in one[suite]["report"]["tasks"].values())
    # the encoding was split: each process saw every input and encoded its own share, together each input once
    inputs = one[suite]["counts"]["inputs"]
    assert one[suite]["counts"]["mine"] == inputs > 0
    assert [two[rank][suite]["counts"]["inputs"] for rank in (0, 1)] == [inputs, inputs]
    mine = [two[rank][suite]["counts"]["mine"] for rank in (0, 1)]
    assert sum(mine) == inputs and all(0.3 * inputs <= m <= 0.7 * inputs for m in mine), (suite, mine, inputs)


def test_the_cli_under_torch_distributed_run_prints_and_writes_one_report(qwen2_path, tmp_path):
    root = build_senteval(tmp_path / "senteval")
    command = ["eval", "sts", "--model", str(qwen2_path), "--dtype", "float32", "--data", str(root),
               "--batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "mmembed.cli",
                           *command, "-o", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*command, "-o", str(tmp_path / "one")]) == 0
    one, two = (json.loads((tmp_path / name / "sts.json").read_text()) for name in ("one", "two"))
    assert two["tasks"] == one["tasks"] and two["summary"] == one["summary"]
    assert two["tasks"]["STSBenchmark"]["score"] == one["tasks"]["STSBenchmark"]["score"]
    markdown = (tmp_path / "one" / "sts.md").read_text()
    table = markdown[markdown.index("| task"):]
    assert done.stdout.count("# sts") == 1 and done.stdout.count(table) == 1  # printed by the main process only
    assert done.stderr.count("wrote ") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["sts.json", "sts.md", "sts.png"]


def _share_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1")
    with processes() as procs:
        result: dict = {"sliced": encode_sharded(lambda xs: np.asarray(xs, dtype=np.float32)[:, None] * 2,
                                                  list(range(7)), procs).tolist()}

        def failing() -> tuple[list[int], list]:
            if procs.rank == 1:
                raise InputError("inputs[3]: a bad image")
            return [], []

        try:
            gather_shares(procs, 0, failing)
        except InputError as exc:  # raised on both processes: neither waits for the other
            result["error"] = str(exc)
    Path(f"{out}.{rank}").write_text(json.dumps(result))


def test_shares_gather_in_order_and_an_error_on_one_process_raises_on_all(tmp_path):
    assert encode_sharded(lambda xs: np.ones((len(xs), 2)), ["a", "b"], Processes()).shape == (2, 2)
    mp.start_processes(_share_worker, args=(2, free_port(), str(tmp_path / "out")), nprocs=2, start_method="spawn",
                       join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"out.{rank}").read_text())
        assert result == {"sliced": [[2.0 * i] for i in range(7)], "error": "inputs[3]: a bad image"}
