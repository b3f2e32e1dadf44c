"""Global-pool scoring at M-BEIR scale: exact top-k of Q queries against N random d-dim candidates.

Compares, each in its own process (peak RSS is per process):
  * mmembed: ``topk_search`` reading the pool block by block from an ``.npy`` file on disk (``NpyFile``);
  * full:    the plain way, the whole pool in RAM, one ``queries @ pool.T`` matrix, then ``topk``;
  * faiss:   ``IndexFlatIP`` (exact), when faiss-cpu is installed.
Prints throughput (query x candidate scores per second), peak RSS, the ratios against the plain way, and how often
each method returns the same top-k ids as the first one.

    python bench/retrieval.py                       # 1,000 queries x 1,000,000 candidates x 768 (the issue's size)
    python bench/retrieval.py --candidates 200000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_pool(path: Path, n: int, dim: int, seed: int, chunk: int = 50_000) -> None:
    """Random unit vectors written chunk by chunk (never all in memory)."""
    from mmembed.eval.search import write_npy_header

    rng = np.random.default_rng(seed)
    with path.open("wb") as f:
        write_npy_header(f, (n, dim))
        for start in range(0, n, chunk):
            block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            f.write(block.tobytes())


def run(method: str, pool_path: Path, queries_path: Path, k: int, block_size: int, out: Path) -> None:
    """One measurement (in a fresh process)."""
    import torch

    from mmembed.measure import peak_rss_kb, reset_peak_rss

    queries = np.load(queries_path)
    hwm = reset_peak_rss()
    base_kb = peak_rss_kb(hwm)
    start = time.perf_counter()
    if method == "mmembed":
        from mmembed.eval.search import NpyFile, topk_search

        _, index = topk_search(queries, NpyFile(pool_path), k=k, block_size=block_size)
        index = index.numpy()
    elif method == "full":
        pool = torch.from_numpy(np.load(pool_path))
        index = (torch.from_numpy(queries) @ pool.T).topk(k, dim=1).indices.numpy()
    elif method == "faiss":
        import faiss

        pool = np.load(pool_path)
        faiss_index = faiss.IndexFlatIP(pool.shape[1])
        faiss_index.add(pool)
        _, index = faiss_index.search(queries, k)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - start
    np.save(out.with_suffix(".npy"), index)
    out.write_text(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_kb(hwm) / 1024,
                               "rss_before_mb": base_kb / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block-size", type=int, default=65536)
    parser.add_argument("--workdir", help="where the pool .npy goes (default: a temporary folder)")
    parser.add_argument("--methods", default="mmembed,full,faiss")
    parser.add_argument("--_run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run:
        method, pool, out = args._run
        run(method, Path(pool), Path(pool).with_name("queries.npy"), args.k, args.block_size, Path(out))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        pool_path = tmp / "pool.npy"
        t0 = time.perf_counter()
        make_pool(pool_path, args.candidates, args.dim, seed=0)
        queries = np.random.default_rng(1).standard_normal((args.queries, args.dim), dtype=np.float32)
        np.save(tmp / "queries.npy", queries / np.linalg.norm(queries, axis=1, keepdims=True))
        print(f"pool: {args.candidates:,} x {args.dim} float32 = {pool_path.stat().st_size / 2**30:.2f} GiB on disk "
              f"(written in {time.perf_counter() - t0:.0f} s); {args.queries:,} queries; top-{args.k}; "
              f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
        results, ids = {}, {}
        for method in args.methods.split(","):
            if method == "faiss":
                try:
                    import faiss  # noqa: F401
                except ImportError:
                    print("faiss: not installed (pip install faiss-cpu to compare)")
                    continue
            out = tmp / f"{method}.json"
            cmd = [sys.executable, __file__, "--_run", method, str(pool_path), str(out), "--k", str(args.k),
                   "--block-size", str(args.block_size)]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{method}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                continue
            results[method] = json.loads(out.read_text())
            ids[method] = np.load(out.with_suffix(".npy"))
        scores = args.queries * args.candidates
        for method, r in results.items():
            r["extra_mb"] = r["peak_rss_mb"] - r["rss_before_mb"]
            print(f"{method:8s} {r['seconds']:7.1f} s  {scores / r['seconds'] / 1e9:6.2f} G scores/s  "
                  f"peak RSS {r['peak_rss_mb']:8.0f} MB ({r['extra_mb']:.0f} MB above the process's start)")
        if "full" in results:
            for method in results:
                if method != "full":
                    print(f"{method} vs full: speed {results['full']['seconds'] / results[method]['seconds']:.2f}x, "
                          f"peak memory {results[method]['peak_rss_mb'] / results['full']['peak_rss_mb']:.2f}x "
                          f"(above start: {results[method]['extra_mb'] / results['full']['extra_mb']:.3f}x)")
        reference = next(iter(ids.values()), None)
        for method, index in ids.items():
            same = np.mean([set(a) == set(b) for a, b in zip(index, reference)])
            print(f"{method}: top-{args.k} id sets identical to {next(iter(ids))} for {100 * same:.1f}% of queries")


if __name__ == "__main__":
    main()
