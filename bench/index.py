"""``mmembed index`` at scale (issue 23, point 5): a build on 1 vs 2 processes, and search of 1M vectors.

Part ``build``: the first ``--sentences`` (2,000) distinct sentences of STS-B train + dev (``../shared/data``) written
as a JSON-lines corpus, indexed with the default model by ``mmembed index build`` twice, each a fresh command: on one
process with ``OMP_NUM_THREADS=2``, and under ``torch.distributed.run --nproc-per-node 2`` with ``OMP_NUM_THREADS=1``
each (the same two cores). Both use ``--shard-size`` n/8 (shards are what the processes share) and float32 vectors.
The timed part is the encoding: from ``manifest.json``'s write (after the model is loaded and fingerprinted) to the
last shard file's (each is renamed into place when complete); the whole command's wall time (Python start, model
load, fingerprint) is shown too. Prints sentences/s of each, the 2-process / 1-process ratio, and checks that the two
folders hold the same ids and vectors (max abs diff).

Part ``search``: ``--vectors`` (1,000,000) synthetic L2-normalised float32 vectors of ``--dim`` (384): 1,000 gaussian
centres, each point spread around its centre in a shared 32-d subspace plus a little isotropic noise (real embeddings
have a low intrinsic dimension; isotropic noise alone makes every neighbour about as far as any other), fixed seed,
written as an index folder in the builder's own format (``write_manifest``, ``write_shard``), and ``--queries``
(1,000) noisy copies of held-out points. Each method runs in a fresh process (this script with ``--worker``) through
``Index.load(folder, method=...)``: blocked (the exact top-k without faiss, the reference), faiss flat, IVF, HNSW (and
PQ with ``--methods``). Measured: the first search of one query (it builds, trains and saves the faiss index; for
blocked, one scan of the shards), then for each search-time setting (``--nprobe``, ``--ef-search`` lists) queries/s
of one ``search`` call with all queries (the best of ``--repeats``), peak RSS growth above the process's RSS after
imports (VmHWM, :mod:`mmembed.measure`), and recall@10 against blocked. Prints the q/s ratios against blocked. HNSW
is built with ``--ef-construction 64`` (mmembed's default, 128, is estimated at ~15 min for 1M x 384 on 2 cores).

Not run here: a build across several machines (``accelerate launch --multi_gpu --num_machines N ... -m mmembed.cli
index build``, the output folder on a file system every machine shares); the report says so (:data:`MULTI_NODE`).

    .venv/bin/python bench/index.py                                    # both parts, full size
    .venv/bin/python bench/index.py --part search --vectors 200000     # quicker
    .venv/bin/python bench/index.py --sentences 64 --vectors 20000 --queries 50 --out /tmp/index.md   # smoke test

Writes a markdown table to ``--out`` (``bench/index.md``) and the raw numbers to ``--json`` (beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STSB = ("senteval/STS/STSBenchmark/sts-train.csv", "senteval/STS/STSBenchmark/sts-dev.csv")
METHODS = ("blocked", "flat", "ivf", "hnsw", "pq")
SEED = 0
CENTRES = 1000  # synthetic vectors: gaussian centres (norm 1) ...
RANK, SPREAD, JITTER = 32, 0.7, 0.2  # ... a spread of norm ~0.7 in a 32-d subspace, isotropic noise of norm ~0.2
MULTI_NODE = ("a build across several machines: on each, `accelerate launch --multi_gpu --num_machines 2 "
              "--machine_rank <0|1> --num_processes <all processes> --main_process_ip <machine 0> --main_process_port "
              "29500 -m mmembed.cli index build --corpus c.jsonl -o /shared/index` (or `torchrun --nnodes 2 "
              "--node-rank <0|1> --nproc-per-node <n> --master-addr <machine 0> --master-port 29500 -m mmembed.cli "
              "...`), the corpus and the output folder on a file system all machines share; and GPUs.")
HNSW_NOTE = (" (mmembed's default is 128; at 1M x 384 on 2 cores that build was estimated at ~15 min from 60k "
             "vectors (30 s), 64 at ~5 min)")


def log(message: str) -> None:
    """Print at once (the parts run for minutes)."""
    print(message, flush=True)


# ------------------------------------------------------------------------------------------ part A: the build
def read_sentences(data: Path, n: int) -> list[str]:
    """The first ``n`` distinct sentences of STS-B train, then dev (whitespace-normalised, in file order)."""
    from mmembed.stsio import read_sts_benchmark

    paths = [data / name for name in STSB]
    if not all(p.is_file() for p in paths):
        raise SystemExit(f"STS-B not found under {data} (expected {STSB[0]}): give --data, the shared data folder "
                         f"(see ../shared/data/README.md).")
    seen: dict[str, None] = {}
    for path in paths:
        first, second, _ = read_sts_benchmark(path)
        for sentence in (s for pair in zip(first, second) for s in pair):
            seen.setdefault(sentence, None)
    if len(seen) < n:
        raise SystemExit(f"--sentences {n}: STS-B train + dev hold only {len(seen)} distinct sentences.")
    return list(seen)[:n]


def build_command(corpus: Path, folder: Path, nproc: int, shard_size: int, batch_size: int) -> list[str]:
    """``mmembed index build`` of ``corpus`` into ``folder``; under ``torch.distributed.run`` when ``nproc`` > 1."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    return [sys.executable, *launcher, "-m", "mmembed.cli", "index", "build", "--corpus", str(corpus), "-o",
            str(folder), "--shard-size", str(shard_size), "--vector-dtype", "float32", "--batch-size",
            str(batch_size), "-q"]


def run_build(corpus: Path, folder: Path, nproc: int, shard_size: int, batch_size: int, rows: int) -> dict[str, Any]:
    """One build command (``2 / nproc`` threads a process): its wall time and encoding time (see the docstring)."""
    threads = max(1, (os.cpu_count() or 2) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    log(f"build on {nproc} process(es), {threads} thread(s) each ...")
    start = time.perf_counter()
    proc = subprocess.run(build_command(corpus, folder, nproc, shard_size, batch_size), env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build on {nproc} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    manifest = json.loads((folder / "manifest.json").read_text())
    first = (folder / "manifest.json").stat().st_mtime_ns
    last = max((folder / f"{s['name']}.npy").stat().st_mtime_ns for s in manifest["shards"])
    encode = (last - first) / 1e9
    result = {"processes": nproc, "threads_each": threads, "wall_s": wall, "encode_s": encode,
              "sentences_per_s": rows / encode if encode > 0 else math.nan, "wall_sentences_per_s": rows / wall,
              "shards": len(manifest["shards"])}
    log(f"  encode {encode:.1f} s ({result['sentences_per_s']:.1f} sentences/s), whole command {wall:.1f} s")
    return result


def compare_folders(a: Path, b: Path) -> dict[str, Any]:
    """Whether two index folders hold the same ids in the same order, and the max abs diff of their vectors."""
    from mmembed.index import Index

    one, two = Index.load(a, method="blocked"), Index.load(b, method="blocked")
    same_ids = one.ids == two.ids
    diff = float(np.abs(one.vectors() - two.vectors()).max()) if same_ids else math.nan
    return {"same_ids": same_ids, "max_abs_diff": diff}


def part_build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part A: the same corpus built on 1 and on 2 processes."""
    sentences = read_sentences(args.data, args.sentences)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n" for i, s in enumerate(sentences)))
    shard_size = args.shard_size or max(1, math.ceil(len(sentences) / 8))
    log(f"part build: {len(sentences):,} STS-B sentences, default model, shards of {shard_size} "
        f"({math.ceil(len(sentences) / shard_size)} shards), {os.cpu_count()} cores")
    runs = [run_build(corpus, work / f"index-{n}proc", n, shard_size, args.batch_size, len(sentences))
            for n in (1, 2)]
    check = compare_folders(work / "index-1proc", work / "index-2proc")
    ratio = runs[1]["sentences_per_s"] / runs[0]["sentences_per_s"]
    wall_ratio = runs[0]["wall_s"] / runs[1]["wall_s"]
    log(f"  2-process / 1-process: {ratio:.2f}x sentences/s (encoding), {wall_ratio:.2f}x whole command; "
        f"same ids: {check['same_ids']}, max abs diff of the vectors: {check['max_abs_diff']:.3g}")
    return {"sentences": len(sentences), "shard_size": shard_size, "runs": runs, "ratio": ratio,
            "wall_ratio": wall_ratio, **check}


# ----------------------------------------------------------------------------------------- part B: the search
def clustered(rng: np.random.Generator, centres: np.ndarray, basis: np.ndarray, n: int) -> np.ndarray:
    """``n`` L2-normalised points: a random centre each, plus a spread of norm about :data:`SPREAD` in the
    ``basis``'s subspace and isotropic noise of norm about :data:`JITTER`."""
    rank, dim = basis.shape
    points = centres[rng.integers(len(centres), size=n)]
    points += (rng.standard_normal((n, rank), dtype=np.float32) * np.float32(SPREAD / math.sqrt(rank))) @ basis
    points += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(JITTER / math.sqrt(dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def synthetic_manifest(n: int, dim: int) -> dict[str, Any]:
    """A manifest of the builder's format for synthetic vectors: no model (its fingerprint names the data, so a
    text query is refused), a 'corpus' hash naming the generator's settings (the faiss cache key)."""
    from mmembed.index.builder import SHARD_SIZE
    from mmembed.index.manifest import FORMAT, VERSION, as_json, shard_ranges

    tag = f"synthetic n={n} dim={dim} centres={CENTRES} rank={RANK} spread={SPREAD} jitter={JITTER} seed={SEED}"
    return as_json({
        "format": FORMAT, "version": VERSION,
        "model": {"spec": "synthetic", "load": {}, "name_or_path": "synthetic", "fingerprint": tag, "config": None,
                  "dtype": None},
        "template": None, "pooler": None, "dimension": dim, "dtype": "float32", "prompt": {"name": None, "text": ""},
        "corpus": {"path": tag, "sha256": tag, "rows": n, "image_root": None},
        "shard_size": SHARD_SIZE, "shards": shard_ranges(n, SHARD_SIZE),
    })


def make_vectors(folder: Path, n: int, dim: int, queries: int) -> Path:
    """Write the synthetic index folder (shard by shard, through the builder's writers) and ``queries.npy`` (noisy
    copies of held-out points) beside it; returns the latter."""
    from mmembed.index.builder import write_shard
    from mmembed.index.corpus import Record
    from mmembed.index.manifest import write_manifest

    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((CENTRES, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((dim, min(RANK, dim))))[0].T.astype(np.float32)
    manifest = synthetic_manifest(n, dim)
    folder.mkdir(parents=True)
    write_manifest(folder, manifest)
    for shard in manifest["shards"]:
        start, stop = shard["start"], shard["stop"]
        records = [Record(str(i), None, None, "synthetic") for i in range(start, stop)]
        write_shard(folder, shard, records, clustered(rng, centres, basis, stop - start))
    held_out = clustered(rng, centres, basis, queries)  # not in the index
    asked = held_out + rng.standard_normal(held_out.shape, dtype=np.float32) * np.float32(0.1 / math.sqrt(dim))
    path = folder.parent / "queries.npy"
    np.save(path, asked / np.linalg.norm(asked, axis=1, keepdims=True))
    return path


def values(text: str) -> list[int | None]:
    """A comma-separated list of search-time values; ``default`` is None (mmembed's default)."""
    return [None if v.strip() == "default" else int(v) for v in text.split(",") if v.strip()]


def search_settings(method: str, args: argparse.Namespace) -> list[tuple[str, dict[str, int | None]]]:
    """The search-time settings one build of ``method`` is searched with: (label, FaissOptions fields)."""
    if method in ("ivf", "pq"):
        return [(f"nprobe={v or 'default'}", {"nprobe": v}) for v in values(args.nprobe)]
    if method == "hnsw":
        return [(f"efSearch={v or 'default'}", {"ef_search": v}) for v in values(args.ef_search)]
    return [("exact", {})]


def default_label(label: str, index: Any, k: int) -> str:
    """``label`` with the value mmembed's default resolved to (the rules of :func:`search_index`)."""
    if not label.endswith("=default") or index._faiss is None:
        return label
    value = max(8, index._faiss.nlist // 16) if label.startswith("nprobe") else max(64, 2 * k)
    return f"{label} ({value})"


def worker(args: argparse.Namespace) -> None:
    """One method in this fresh process: build (the first search, of one query), then one search of all queries
    for each search-time setting; prints a JSON line, saves the top-k rows (``--worker-out``, .npz)."""
    from mmembed.index import Index
    from mmembed.measure import peak_rss_kb, proc_kb, reset_peak_rss

    try:
        import faiss  # noqa: F401 - imported before the baseline, whatever the method
    except ImportError:
        pass
    queries = np.load(args.queries_file)
    hwm = reset_peak_rss()
    base = proc_kb("VmRSS")
    index = Index.load(args.worker_folder, method=args.worker, nlist=args.nlist, hnsw_m=args.hnsw_m, pq_m=args.pq_m)
    index.options.ef_construction = args.ef_construction  # FaissOptions has it; Index.load does not take it
    start = time.perf_counter()
    index.search(queries[:1], args.k)
    result: dict[str, Any] = {
        "build_s": time.perf_counter() - start, "build_peak_mb": (peak_rss_kb(hwm) - base) / 1024,
        "held_mb": (proc_kb("VmRSS") - base) / 1024, "rss_method": "VmHWM" if hwm else "ru_maxrss", "settings": []}
    if index._faiss is not None and hasattr(index._faiss, "nlist"):
        result["nlist"] = int(index._faiss.nlist)
    rows = {}
    for i, (label, options) in enumerate(search_settings(args.worker, args)):
        for key, value in options.items():
            setattr(index.options, key, value)
        hwm, seconds = reset_peak_rss(), math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            ids, _ = index.search(queries, args.k)
            seconds = min(seconds, time.perf_counter() - start)
        result["settings"].append({"label": default_label(label, index, args.k), "qps": len(queries) / seconds,
                                   "search_peak_mb": (peak_rss_kb(hwm) - base) / 1024})
        rows[f"s{i}"] = np.array([[int(x) if x is not None else -1 for x in row] for row in ids], dtype=np.int64)
    np.savez(args.worker_out, **rows)
    print(json.dumps(result))


def run_method(args: argparse.Namespace, method: str, folder: Path, queries: Path) -> dict[str, Any] | None:
    """``method`` in a fresh process (its faiss cache file removed first, so that the build is measured): its JSON
    result, each setting with its top-k rows; None when it failed (its stderr shown)."""
    for cached in folder.glob("faiss-*.index"):
        cached.unlink()
    out = folder.parent / f"{method}-rows.npz"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--worker-folder", str(folder),
           "--queries-file", str(queries), "--worker-out", str(out), "--k", str(args.k), "--repeats",
           str(args.repeats), "--hnsw-m", str(args.hnsw_m), "--ef-construction", str(args.ef_construction),
           "--nprobe", args.nprobe, "--ef-search", args.ef_search]
    for option in ("nlist", "pq_m"):
        if getattr(args, option) is not None:
            cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    log(f"search: {method} ...")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"  {method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return None
    result = json.loads(lines[-1])
    with np.load(out) as saved:
        for i, setting in enumerate(result["settings"]):
            setting["rows"] = saved[f"s{i}"]
    log(f"  build {result['build_s']:.1f} s, peak +{result['build_peak_mb']:.0f} MB; " + "; ".join(
        f"{s['label']}: {s['qps']:.1f} queries/s" for s in result["settings"]))
    return result


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k that ``found`` holds."""
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, exact)]))


def part_search(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part B: every method over the synthetic vectors, recall and q/s ratios against blocked."""
    import faiss

    folder = work / "vectors"
    log(f"part search: {args.vectors:,} x {args.dim} float32 synthetic vectors, {args.queries:,} queries, "
        f"top-{args.k}, {args.threads} thread(s), faiss {faiss.__version__}")
    start = time.perf_counter()
    queries = make_vectors(folder, args.vectors, args.dim, args.queries)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**30
    log(f"  written in {time.perf_counter() - start:.0f} s ({size:.2f} GiB)")
    methods = ["blocked", *(m for m in args.methods.split(",") if m and m != "blocked")]
    results = {m: run_method(args, m, folder, queries) for m in methods}
    blocked = results["blocked"]
    if blocked is None:
        raise SystemExit("the blocked (exact) search failed: no reference for recall.")
    exact, reference = blocked["settings"][0]["rows"], blocked["settings"][0]["qps"]
    for result in (r for r in results.values() if r is not None):
        for setting in result["settings"]:
            setting["recall"] = recall(setting.pop("rows"), exact)
            setting["qps_ratio"] = setting["qps"] / reference
    options = {o: getattr(args, o) for o in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_m")}
    return {"vectors": args.vectors, "dim": args.dim, "queries": args.queries, "k": args.k, "threads": args.threads,
            "faiss": faiss.__version__, "options": options, "methods": results}


# ------------------------------------------------------------------------------------------------ the report
def build_table(build: dict[str, Any]) -> list[str]:
    """Part A's markdown table and its note."""
    rows = ["| processes | threads each | encode s | sentences/s | whole command s | sentences/s (whole) |",
            "|---|---|---|---|---|---|"]
    for r in build["runs"]:
        rows.append(f"| {r['processes']} | {r['threads_each']} | {r['encode_s']:.1f} | {r['sentences_per_s']:.1f} | "
                    f"{r['wall_s']:.1f} | {r['wall_sentences_per_s']:.1f} |")
    note = (f"**2-process / 1-process: {build['ratio']:.2f}x** sentences/s (encoding), {build['wall_ratio']:.2f}x "
            f"whole command. Same ids: {build['same_ids']}; max abs diff of the vectors: {build['max_abs_diff']:.3g}. "
            f"{build['sentences']:,} STS-B sentences, default model, shards of {build['shard_size']}, float32 "
            f"vectors. Encode s: from manifest.json's write (model loaded) to the last shard's; whole command: "
            f"Python start, imports, model load included.")
    return [*rows, "", note]


def search_table(search: dict[str, Any]) -> list[str]:
    """Part B's markdown table (a row per method and search setting) and its note."""
    header = ("| method | search setting | build s | queries/s | q/s vs blocked | recall@10 | peak MB (build) | "
              "held MB | peak MB (search) |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    for method, r in search["methods"].items():
        if r is None:
            rows.append(f"| {method} | failed | | | | | | | |")
            continue
        name = f"{method} (nlist {r['nlist']})" if "nlist" in r else method
        for i, s in enumerate(r["settings"]):
            first = i == 0
            build = (f"{r['build_s']:.1f}", f"{r['build_peak_mb']:.0f}", f"{r['held_mb']:.0f}") if first else ("",) * 3
            rows.append(f"| {name if first else ''} | {s['label']} | {build[0]} | {s['qps']:.1f} | "
                        f"{s['qps_ratio']:.2f}x | {s['recall']:.4f} | {build[1]} | {build[2]} | "
                        f"{s['search_peak_mb']:.0f} |")
    options = search["options"]
    note = (f"{search['vectors']:,} x {search['dim']} float32 vectors ({CENTRES} gaussian centres, spread in a "
            f"{RANK}-d subspace), {search['queries']:,} queries, top-{search['k']}, {search['threads']} thread(s), "
            f"faiss {search['faiss']}. faiss build options: nlist={options['nlist'] or 'default'}, hnsw_m="
            f"{options['hnsw_m']}, ef_construction={options['ef_construction']}"
            f"{HNSW_NOTE if options['ef_construction'] != 128 else ''}. Build s: the first search (of one query): "
            f"faiss builds, trains and saves its index; blocked scans the shards once. MB: RSS growth above the "
            f"worker's RSS after imports (peak; held: after the build). Recall@10: against blocked.")
    return [*rows, "", note]


def ratios(results: dict[str, Any]) -> str:
    """One line with every ratio of the run."""
    parts = []
    if "build" in results:
        parts.append(f"build 2 proc / 1 proc: {results['build']['ratio']:.2f}x sentences/s")
    for method, r in results.get("search", {}).get("methods", {}).items():
        for s in (r or {}).get("settings", []):
            if method != "blocked":
                parts.append(f"{method} {s['label']}: {s['qps_ratio']:.2f}x q/s, recall {s['recall']:.3f}")
    return "ratios (vs blocked for search): " + "; ".join(parts)


def report(results: dict[str, Any]) -> str:
    """The markdown report."""
    run = f"`{' '.join(results['command'])}` ({results['cores']} cores, 1-minute load average {results['load']:.2f})"
    lines = ["# bench/index.py", "", run, ""]
    if "build" in results:
        lines += ["## build: 1 vs 2 processes", "", *build_table(results["build"]), ""]
    if "search" in results:
        lines += ["## search", "", *search_table(results["search"]), ""]
    lines.append(f"Not run here: {MULTI_NODE}")
    return "\n".join([*lines, "", ratios(results), ""])


def parse_args() -> argparse.Namespace:
    """The options (and the worker's hidden ones)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["build", "search", "all"], default="all")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (holds senteval/)")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=None, help="build: records a shard (default n/8)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="searches of all queries a setting (the best is kept)")
    parser.add_argument("--methods", default="blocked,flat,ivf,hnsw", help=f"of {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="search: OMP threads")
    parser.add_argument("--nlist", type=int, default=None, help="ivf/pq cells (default: mmembed's, ~4 sqrt(n))")
    parser.add_argument("--nprobe", default="16,32,default", help="ivf/pq cells searched, each a row "
                                                                 "(default: mmembed's, max(8, nlist/16))")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64, help="hnsw (mmembed's default: 128)")
    parser.add_argument("--ef-search", default="32,default,128", help="hnsw, each a row (default: max(64, 2k))")
    parser.add_argument("--pq-m", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where the indexes go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "index.md", help="markdown report")
    parser.add_argument("--json", type=Path, default=None, help="raw results (default: --out with .json)")
    for hidden in ("--worker", "--worker-folder", "--worker-out", "--queries-file"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    """Run the parts asked for, print the report and write it (``--out``, ``--json``)."""
    args = parse_args()
    if args.worker:
        worker(args)
        return 0
    from mmembed.files import write_text

    if unknown := [m for m in args.methods.split(",") if m and m not in METHODS]:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    try:  # a bad list fails now, not in a worker
        values(args.nprobe), values(args.ef_search)
    except ValueError as exc:
        raise SystemExit(f"--nprobe / --ef-search: comma-separated whole numbers or 'default' ({exc})") from None
    load = os.getloadavg()[0]
    results: dict[str, Any] = {"command": ["bench/index.py", *sys.argv[1:]], "cores": os.cpu_count(), "load": load}
    if load > 0.5:
        log(f"warning: the 1-minute load average is {load:.2f}: another process is using the CPU, and every timing "
            f"here (the 2-thread build most of all) will be skewed.")
    work = Path(tempfile.mkdtemp(prefix="mmembed-bench-index-", dir=args.workdir))
    try:
        if args.part in ("build", "all"):
            results["build"] = part_build(args, work)
        if args.part in ("search", "all"):
            results["search"] = part_search(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(results)
    print("\n" + text, flush=True)
    json_path = args.json or args.out.with_suffix(".json")
    write_text(args.out, text)
    write_text(json_path, json.dumps(results, indent=1, default=str) + "\n")
    log(f"wrote {args.out} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
