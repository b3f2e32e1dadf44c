"""Speed suite: runs the project's speed benchmarks one after another and writes one markdown report.

Each benchmark is a standalone script in ``bench/`` that measures mmembed against a baseline in the same run and
prints its own table; the suite runs each in its own subprocess (sequentially: the benchmarks time themselves and the
CPU machine has 2 cores), keeps its stdout, and writes ``--out`` (default ``bench/SPEED.md``):

- a header: date, machine (CPU model, cores, RAM, load average at the start), torch version, GPU name when CUDA is
  available, git commit, and the exact command;
- a summary table: benchmark | headline ratio | goal | met? | wall time (ratios parsed from each script's output;
  "see section" where the parse fails);
- one section per benchmark: what it compares, its goal, the command, the script's own table (verbatim stdout,
  progress lines dropped) and its wall time. A benchmark that exits non-zero is reported with the tail of its stderr,
  the suite goes on, and exits 1 at the end.

Benchmarks (``--only`` takes a comma-separated subset, in this order):

- ``encode``: ``bench/encode.py``, ``Embedder.encode`` vs ``SentenceTransformer.encode`` on the same weights;
- ``gradcache``: ``bench/gradcache.py``, a contrastive step at batch 256 with gradient caching vs batch 16 / 256;
- ``muco``: ``bench/muco.py``, MuCo multi-turn packing vs single-turn batches of the same pairs (tiny model);
- ``grace``: ``bench/grace.py``, the GRACE GRPO step split into generation / reward / update;
- ``elastic``: the throughput half of ``bench/elastic.py`` only (``--speed-only``: without it the script trains a
  model for 60 steps unless ``--trained`` is given, and scores STS-B): its ``throughputs`` on the untrained default
  model (``mmembed.load(base_model())``, the Starbucks template and pooling) at 30 (full) / 20 / 15 / 10 layers;
  the quality numbers are in ``bench/elastic.md``;
- ``retrieval``: ``bench/retrieval.py``, exact top-k from disk (mmembed) vs a full in-RAM matmul vs faiss;
- ``gpu``: ``bench/gpu.py --compile --mini-batch 256``, the Qwen2-VL-2B LoRA training step at batch 1,024 (MFU) and
  encode throughput; only where CUDA is available. Elsewhere its section says so and points to the recorded GPU
  run, ``bench/RESULTS.md`` (``--resume`` never keeps such a skipped section).
- ``serve``: ``bench/serve.py``, ``mmembed serve`` vs a naive server and infinity-emb (1 / 8 / 32 clients).

Settings: ``--quick`` uses small sizes for a smoke run (a few minutes per benchmark; its numbers only show that
everything runs): encode ``--n 200 --repeats 1``; gradcache ``--steps 1`` and grace ``--steps 1 --prompts 1
--generations 2 --completion-tokens 8``, both on a tiny random Qwen2 (``mmembed.testing.build_tiny_qwen2``, built in a
temporary folder: with SmolLM2-135M one gradcache worker alone took over 15 minutes on the shared 2-core machine);
muco ``--packs 2 --steps 1 --warmup 1 --rounds 1``; elastic 64 sentences, 1 round; retrieval ``--candidates
100000``; serve ``--seconds 2 --clients 1,8``. Without ``--quick`` each script runs with its own defaults, except where those take well over 15 minutes
on 2 CPU cores: ``encode`` then runs ``--n 1000 --repeats 2`` (its defaults, 2,000 sentences x 3 repeats through
four SmolLM2 workers, take roughly 15-30 minutes idle, far more on a shared machine); the report says so.

The report is rewritten after every benchmark, so an interrupted run keeps what finished; ``--resume`` keeps the
sections of benchmarks that already succeeded in ``--out`` with the same ``--quick`` setting and runs the others.

Run: ``.venv/bin/python bench/suite.py [--quick] [--only encode,gradcache] [--out bench/SPEED.md] [--resume]
[--timeout SECONDS]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULT_TAG = "<!-- suite-result "
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [^]]*\] \[(DEBUG|INFO|WARNING)\]")  # library logging on stdout (deepspeed)
NUM = r"([0-9]+(?:\.[0-9]+)?|nan|inf)"

# a headline parser: stdout -> (headline text, goal met: True / False / None where there is no goal or no number)
Headline = Callable[[str], tuple[str, bool | None]]


@dataclass
class Benchmark:
    name: str
    script: str  # path relative to the repository root
    compares: str
    goal: str | None
    args: list[str]
    quick_args: list[str]
    headline: Headline
    note: str | None = None  # why the full run does not use the script's defaults
    short_goal: str | None = None  # the goal in the summary table (default: ``goal`` up to its first " (")
    tiny_in_quick: bool = False  # --quick passes ``--model`` a tiny random Qwen2 (SmolLM2 is too slow for a smoke run)
    needs_cuda: bool = False  # skipped (with a pointer to bench/RESULTS.md) where CUDA is unavailable
    progress: re.Pattern[str] = field(default_factory=lambda: re.compile(r"^(running .*\.\.\.|\s*$)"))

    def argv(self, quick: bool, tiny: Path | None) -> list[str]:
        argv = [sys.executable, str(ROOT / self.script), *(self.quick_args if quick else self.args)]
        return argv + ["--model", str(tiny)] if quick and self.tiny_in_quick and tiny else argv


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    headline: str
    met: bool | None
    section: str
    quick: bool
    skipped: bool = False  # a GPU benchmark not run for want of CUDA


# ------------------------------------------------------------------------------------------------ headlines


def _f(text: str) -> float:
    return float(text)


def encode_headline(out: str) -> tuple[str, bool | None]:
    """Speed ratios mmembed/ST of each variant (table rows ``variant mmembed sent/s RSS CUDA speed mem cos check``)."""
    speeds: dict[str, float] = {}
    for m in re.finditer(rf"^(\S+)\s+mmembed\s+{NUM}\s+{NUM}\s+\S+\s+{NUM}\s", out, re.MULTILINE):
        speeds[m.group(1)] = _f(m.group(4))
    if not speeds:
        raise ValueError("no mmembed rows")
    llm = {k: v for k, v in speeds.items() if k.startswith("smollm2")}
    text = ", ".join(f"{k} {v:.2f}x" for k, v in speeds.items())
    return f"encode sent/s mmembed/ST: {text}", (min(llm.values()) >= 1.3) if llm else None


def fast_headline(out: str) -> tuple[str, bool | None]:
    """The two goal lines of ``bench/encode.py --fast`` (default model and all-MiniLM-L6-v2)."""
    goals = re.findall(r"^(default|minilm) goal .*-> (PASS|FAIL)$", out, re.MULTILINE)
    if len(goals) != 2:
        raise ValueError("no goal lines")
    ratio = re.search(rf"= {NUM}x -> (?:PASS|FAIL)$", out, re.MULTILINE)
    best = re.findall(r"(int8|onnx|onnx\+int8) ([0-9.]+)x, min cos ([0-9.]+), STS-B dev ([+-][0-9.]+): (PASS|fail)", out)
    parts = [f"default {label} {speed}x (cos {cos}, STS {gap})" for label, speed, cos, gap, _ in best]
    parts.append(f"MiniLM fast path / ST's fastest {ratio.group(1)}x" if ratio else "MiniLM: no ratio")
    return "; ".join(parts), all(verdict == "PASS" for _, verdict in goals)


def gradcache_headline(out: str) -> tuple[str, bool | None]:
    m = re.search(rf"goal: 256 cached <= 1\.5 x batch 16 memory: {NUM} -> (MET|NOT MET)", out)
    if not m:
        raise ValueError("no goal line")
    ratio = _f(m.group(1))
    rows = re.findall(rf"^(256 cached \(mini 16\)|16 uncached|256 uncached)\s+{NUM}\s+{NUM}", out, re.MULTILINE)
    steps = {name: _f(step) for name, step, _ in rows}
    time_note = ""
    if "256 cached (mini 16)" in steps and "256 uncached" in steps and steps["256 uncached"] > 0:
        time_note = f"; step time 256 cached / uncached {steps['256 cached (mini 16)'] / steps['256 uncached']:.2f}x"
    return f"peak memory 256 cached / batch 16: {ratio:.2f}x{time_note}", ratio <= 1.5


def muco_headline(out: str) -> tuple[str, bool | None]:
    m = re.search(rf"ratio \(a\)/\(b\): pairs/s {NUM}x \(model-only {NUM}x\), peak memory {NUM}x", out)
    if not m:
        raise ValueError("no ratio line")
    speed = _f(m.group(1))
    return (f"pairs/s packed / single-turn: {speed:.2f}x (model-only {_f(m.group(2)):.2f}x), "
            f"peak memory {_f(m.group(3)):.2f}x"), speed >= 3


def grace_headline(out: str) -> tuple[str, bool | None]:
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
    res = json.loads(line)
    a, b = res["query rationale (default)"], res["query text only"]
    return (f"step s rationale / text only: {a['step'] / b['step']:.2f}x ({a['step']:.2f} vs {b['step']:.2f} s; "
            f"generation {100 * a['generation'] / a['step']:.0f}% of the default step)"), None


def elastic_headline(out: str) -> tuple[str, bool | None]:
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
    rates = {int(k): v for k, v in json.loads(line)["per_second"].items()}
    full = rates[max(rates)]
    half = max(rates) // 2
    parts = ", ".join(f"{layer}: {rate / full:.2f}x" for layer, rate in rates.items() if layer != max(rates))
    met = rates[half] / full >= 1.8 if half in rates else None
    return f"throughput vs full ({max(rates)} layers): {parts}", met


def retrieval_headline(out: str) -> tuple[str, bool | None]:
    found = re.findall(rf"^(\w+) vs full: speed {NUM}x, peak memory {NUM}x", out, re.MULTILINE)
    if not found:
        raise ValueError("no 'vs full' line")
    same = re.findall(r"^(\w+): top-\d+ id sets identical to \w+ for ([0-9.]+)% of queries", out, re.MULTILINE)
    text = "; ".join(f"{m} vs full matmul: speed {_f(s):.2f}x, peak RSS {_f(p):.2f}x" for m, s, p in found)
    if same and any(float(p) < 100 for _, p in same):
        text += " (top-k ids differ: see section)"
    return text, None


def gpu_headline(out: str) -> tuple[str, bool | None]:
    lines = out.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln == "{")  # gpu.py prints its result as indented JSON, last
    r = json.loads("\n".join(lines[start:]))
    return (f"{r['card']}: MFU {100 * r['mfu']:.1f}%, {r['samples_per_second']} pairs/s, {r['tokens_per_second']} "
            f"tokens/s, peak {r['peak_train_memory_mb']} MiB; encode {r['encode_tokens_per_second']} tokens/s"), \
        r["mfu"] >= 0.35


def serve_headline(out: str) -> tuple[str, bool | None]:
    """The ratio lines of bench/serve.py (``  model: what = 1.43x (>= 1.0x: met)``)."""
    found = re.findall(rf"^  (\S+): (.*?) = {NUM}x \((?:>=|<=) {NUM}x: (met|NOT met)\)", out, re.MULTILINE)
    if not found:
        raise ValueError("no ratio lines")
    text = "; ".join(f"{model} {what} {ratio}x" for model, what, ratio, _, _ in found)
    return f"serve: {text}", all(verdict == "met" for *_, verdict in found)


def safe_headline(bench: Benchmark, out: str) -> tuple[str, bool | None]:
    try:
        return bench.headline(out)
    except (ValueError, KeyError, StopIteration, ZeroDivisionError, json.JSONDecodeError, TypeError):
        return "see section", None


# ------------------------------------------------------------------------------------------------ benchmarks

BENCHMARKS = [
    Benchmark(
        "encode", "bench/encode.py",
        "sentences/s and peak memory of `Embedder.encode` vs `SentenceTransformer.encode` on the same weights and "
        "STS-B train sentences: all-MiniLM-L6-v2, and SmolLM2-135M (last-token pooling) without and with a prompt; "
        "the embeddings must agree (min cosine > 0.999)",
        "mmembed >= 1.3x sentence-transformers' sentences/s on the same LLM weights (the smollm2 rows)",
        ["--n", "1000", "--repeats", "2"], ["--n", "200", "--repeats", "1"], encode_headline,
        note="`--n 1000 --repeats 2` instead of the script's defaults (`--n 2000 --repeats 3`): those take "
             "roughly 15-30 minutes on 2 idle CPU cores (four SmolLM2 workers encoding 2,000 sentences 3 times; "
             "measured 5-9 sentences/s a worker on the shared machine)"),
    Benchmark(
        "fast", "bench/encode.py",
        "`quantize='int8'` (torchao) and `backend='onnx'` (ONNX Runtime, also with its int8) of the default model and "
        "all-MiniLM-L6-v2 against their float32 torch path, and MiniLM against sentence-transformers' torch, ONNX "
        "and ONNX-int8 backends (their own environment: `bench/encode.py --setup-st-onnx`); sentences/s, peak RSS, "
        "min cosine to float32, STS-B dev Spearman of the default model's variants",
        "default model >= 2x float32 sentences/s with min cosine >= 0.99 and STS-B dev within 0.5; MiniLM's fast "
        "path >= 1.0x sentence-transformers' fastest CPU backend",
        ["--fast", "--n", "2000", "--repeats", "3"], ["--fast", "--n", "100", "--repeats", "1"], fast_headline,
        short_goal="default >= 2x fp32 at cos >= 0.99, STS within 0.5; MiniLM >= 1.0x ST's fastest"),
    Benchmark(
        "gradcache", "bench/gradcache.py",
        "step time and peak memory of a LoRA contrastive step (InfoNCE, AdamW) on SmolLM2-135M: batch 256 with "
        "gradient caching in mini-batches of 16, vs batch 16 and batch 256 uncached",
        "peak memory at batch 256 cached <= 1.5x that of batch 16",
        [], ["--steps", "1"], gradcache_headline, tiny_in_quick=True),
    Benchmark(
        "muco", "bench/muco.py",
        "training pairs/s and peak memory of MuCo multi-turn packing (one image + 7 pairs a conversation) vs "
        "single-turn batches of the same pairs (tiny Qwen2-VL, CPU)",
        ">= 3x pairs/s at K = 7 (stated in bench/muco.py; the tiny model does not reach it, see its docstring)",
        [], ["--packs", "2", "--steps", "1", "--warmup", "1", "--rounds", "1"], muco_headline,
        progress=re.compile(r"^\s*$")),
    Benchmark(
        "grace", "bench/grace.py",
        "seconds per GRACE GRPO step spent on rollout generation, reward and update, with the query / negative "
        "embedded with a greedy rationale (default) vs as text only",
        None, [], ["--steps", "1", "--prompts", "1", "--generations", "2", "--completion-tokens", "8"],
        grace_headline, tiny_in_quick=True, progress=re.compile(r"^(\{.*\}|\s*)$")),
    Benchmark(
        "elastic", "bench/elastic.py",
        "encode throughput of SmolLM2-135M with early exit at 20 / 15 / 10 layers vs the full 30 layers "
        "(`throughputs` of bench/elastic.py on the untrained model, STS-B dev sentences, batch 32); the STS-B "
        "quality of the trained model at each cut is in bench/elastic.md (not re-measured: that needs 60 training "
        "steps)",
        ">= 1.8x throughput at half the layers (issue #8; its Spearman half: bench/elastic.md)",
        ["--speed-only", "--sentences", "512", "--repeats", "3"],
        ["--speed-only", "--sentences", "64", "--repeats", "1"], elastic_headline,
        short_goal=">= 1.8x throughput at half the layers (speed half only; Spearman: bench/elastic.md)",
        progress=re.compile(r"^\{.*\}$")),
    Benchmark(
        "retrieval", "bench/retrieval.py",
        "exact top-10 of 1,000 queries against N random 768-d candidates: mmembed `topk_search` reading the pool "
        "from disk block by block vs a full in-RAM `queries @ pool.T` + `topk` vs faiss `IndexFlatIP`",
        None, [], ["--candidates", "100000"], retrieval_headline),
    Benchmark(
        "gpu", "bench/gpu.py",
        "LoRA contrastive training of a real-size Qwen2-VL-2B config (random weights, bf16 autocast, compiled "
        "layers) with gradient caching at global batch 1,024 x 128 tokens: pairs/s, tokens/s, peak GPU memory, MFU "
        "against the card's dense bf16 peak; encode throughput",
        "MFU >= 35% (issue #9)", ["--compile", "--mini-batch", "256"],
        ["--layers", "2", "--batch", "64", "--mini-batch", "16", "--steps", "1", "--encode-rows", "512"],
        gpu_headline, needs_cuda=True, progress=re.compile(r"^\s*$")),
    Benchmark(
        "serve", "bench/serve.py",
        "`mmembed serve` (dynamic batching) vs a naive server calling `encode` once per request and infinity-emb on "
        "the same all-MiniLM-L6-v2 folder; 1 / 8 / 32 concurrent openai clients: sentences/s, requests/s, p50 / p99",
        ">= 1.0x infinity's and >= 3x the naive server's sentences/s at 32 clients; 1-client p50 <= 1.2x encode's",
        [], ["--seconds", "2", "--clients", "1,8"], serve_headline,
        short_goal=">= 1.0x infinity, >= 3x naive at 32 clients; p50 <= 1.2x encode"),
]
BY_NAME = {b.name: b for b in BENCHMARKS}


# ------------------------------------------------------------------------------------------------ running


TINY_NOTE = ("`$TINY` is a tiny random Qwen2 (2 layers, hidden 64, byte-level tokenizer: "
             "`mmembed.testing.build_tiny_qwen2`) that the suite builds in a temporary folder: SmolLM2-135M takes "
             "over 10 minutes here on a shared 2-core machine even at the smallest settings, so the quick numbers "
             "only show that the benchmark runs")


def sh(argv: list[str], tiny: Path | None = None) -> str:
    """A command as typed from the repository root (the interpreter and paths relative where possible)."""
    out = []
    for arg in argv:
        if tiny is not None and arg == str(tiny):
            out.append("$TINY")
            continue
        try:
            arg = str(Path(arg).relative_to(ROOT)) if arg.startswith("/") else arg
        except ValueError:
            pass
        out.append(shlex.quote(arg))
    return " ".join(out)


def tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def fence(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def skipped(bench: Benchmark, quick: bool) -> Result:
    """The section of a GPU benchmark on a machine without CUDA: what it would run, and where the last run is."""
    recorded = BENCH / "RESULTS.md"
    where = ("the recorded GPU run is in `bench/RESULTS.md`" if recorded.is_file()
             else "no GPU run is recorded yet (`bench/RESULTS.md`)")
    section = "\n".join([f"## {bench.name}", "", f"Compares: {bench.compares}.", "", f"Goal: {bench.goal}.", "",
                          f"Command: `{sh(bench.argv(quick, None))}`", "",
                          f"Not run: CUDA is unavailable on this machine; {where}."])
    return Result(bench.name, True, 0.0, "not run here (no CUDA); see bench/RESULTS.md", None, section, quick,
                  skipped=True)


def run_benchmark(bench: Benchmark, quick: bool, timeout: float | None, tiny: Path | None) -> Result:
    argv = bench.argv(quick, tiny)
    command = sh(argv, tiny)
    print(f"[suite] {bench.name}: {command}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # own process group, so that a timeout or Ctrl-C also ends the benchmark's worker processes
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    seconds = time.perf_counter() - start
    if tiny is not None:  # the temporary folder's name says nothing
        stdout, stderr = stdout.replace(str(tiny), "$TINY"), stderr.replace(str(tiny), "$TINY")
    ok = proc.returncode == 0 and not timed_out
    headline, met = safe_headline(bench, stdout) if ok else ("failed", None)
    table = "\n".join(ln for ln in stdout.splitlines() if not bench.progress.match(ln) and not LOG_LINE.match(ln))
    lines = [f"## {bench.name}", "", f"Compares: {bench.compares}.", "",
             f"Goal: {bench.goal or 'none named'}.", "", f"Command: `{command}`"]
    if bench.note and not quick:
        lines += ["", f"Settings: {bench.note}."]
    if "$TINY" in command:
        lines += ["", f"Settings (--quick): {TINY_NOTE}."]
    lines += ["", f"Wall time: {seconds:.0f} s.", ""]
    if ok:
        if table.strip():
            lines.append(table if bench.name == "elastic" else fence(table))
        if headline == "see section":
            lines += ["", "(The suite could not parse a headline ratio from this output.)"]
    else:
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {proc.returncode}"
        lines += [f"**FAILED** ({why}).", ""]
        if table.strip():
            lines += ["stdout:", "", fence(tail(table)), ""]
        lines += ["stderr (tail):", "", fence(tail(stderr) or "(empty)")]
    status = "ok" if ok else "FAILED"
    print(f"[suite] {bench.name}: {status} in {seconds:.0f} s; {headline}", file=sys.stderr, flush=True)
    return Result(bench.name, ok, seconds, headline, met, "\n".join(lines), quick)


# ------------------------------------------------------------------------------------------------ report


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    ram = ""
    try:
        if m := re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE):
            ram = f", {int(m.group(1)) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    load = ", load average at start {:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") \
        else ""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CUDA unavailable)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [f"- Machine: {cpu}, {cores} cores ({usable} usable){ram}{load}",
            (f"- Python {platform.python_version()}, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), GPU: {gpu}"),
            f"- Commit: {commit}"]


def render(header: list[str], results: dict[str, Result], order: list[str], pending: list[str]) -> str:
    lines = [*header, "", "## Summary", "", "| benchmark | headline ratio | goal | met? | wall s |",
             "|---|---|---|---|---|"]
    for name in order:
        bench = BY_NAME[name]
        goal = (bench.short_goal or bench.goal.split(" (")[0]) if bench.goal else "—"
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | {'not run yet' if name in pending else 'not run'} | {goal} | — | — |")
            continue
        met = "—" if r.met is None else ("yes" if r.met else "no")
        headline = r.headline if r.ok else "**FAILED** (see section)"
        lines.append(f"| {name} | {headline} | {goal} | {met if r.ok else '—'} | {r.seconds:.0f} |")
    for name in order:
        if (r := results.get(name)) is not None:
            meta = {"name": r.name, "ok": r.ok, "seconds": r.seconds, "headline": r.headline, "met": r.met,
                    "quick": r.quick, "skipped": r.skipped}
            lines += ["", f"{RESULT_TAG}{json.dumps(meta)} -->", r.section]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def previous_results(path: Path, quick: bool) -> dict[str, Result]:
    """Successful sections of an earlier report with the same ``--quick`` setting (for ``--resume``)."""
    if not path.is_file():
        return {}
    found = {}
    chunks = path.read_text(encoding="utf-8").split(RESULT_TAG)[1:]
    for chunk in chunks:
        meta_text, _, section = chunk.partition(" -->\n")
        try:
            meta = json.loads(meta_text)
        except json.JSONDecodeError:
            continue
        if meta.get("ok") and not meta.get("skipped") and meta.get("quick") == quick and meta.get("name") in BY_NAME:
            found[meta["name"]] = Result(meta["name"], True, meta["seconds"], meta["headline"], meta["met"],
                                         section.rstrip("\n"), quick)
    return found


def measured_when(path: Path) -> str:
    """`` (measured <date>, commit <commit>)`` from an earlier report's header: when its kept sections ran."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if m := re.search(r"^- Resumed: .*?( \(measured .*\))$", text, re.MULTILINE):
        return m.group(1)  # a resumed report passes on when its sections were measured
    date = re.search(r"^- Date: (.*)$", text, re.MULTILINE)
    commit = re.search(r"^- Commit: (.*)$", text, re.MULTILINE)
    return f" (measured {date.group(1)}, commit {commit.group(1)})" if date and commit else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default=",".join(BY_NAME), help=f"comma-separated subset of {','.join(BY_NAME)}")
    parser.add_argument("--out", type=Path, default=BENCH / "SPEED.md", help="the markdown report")
    parser.add_argument("--resume", action="store_true",
                        help="keep the successful sections already in --out (same --quick setting)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: no limit)")
    args = parser.parse_args()
    # a SIGTERM ends the running benchmark's process group too (run_benchmark), not just this process
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    order = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := [n for n in order if n not in BY_NAME]:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BY_NAME)}")
    order = [n for n in BY_NAME if n in order]
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    results = previous_results(out, args.quick) if args.resume else {}
    results = {k: v for k, v in results.items() if k in order}
    todo = [n for n in order if n not in results]
    started = dt.datetime.now().astimezone()
    header = ["# Speed suite", "", f"- Date: {started:%Y-%m-%d %H:%M %Z}", *machine(),
              f"- Command: `{sh([sys.executable, *sys.argv])}`",
              (f"- Mode: {'--quick (smoke-run sizes, not for quoting)' if args.quick else 'full'}; benchmarks run "
               "one at a time, each in its own process, each measuring mmembed against its baseline in the same run")]
    if kept := [n for n in order if n in results]:
        header.append(f"- Resumed: kept the earlier sections of {', '.join(kept)}{measured_when(out)}")
    if not args.quick and "encode" in todo:
        header.append("- Not the scripts' defaults: encode (see its section)")
    suite_start = time.perf_counter()
    write(out, render(header, results, order, todo))
    with tempfile.TemporaryDirectory(prefix="mmembed-suite-") as tmp:
        tiny = None
        if args.quick and any(BY_NAME[n].tiny_in_quick for n in todo):
            from mmembed.testing import build_tiny_qwen2

            tiny = build_tiny_qwen2(Path(tmp) / "tiny_qwen2")
        for name in todo:
            bench = BY_NAME[name]
            results[name] = skipped(bench, args.quick) if bench.needs_cuda and not cuda_available() else \
                run_benchmark(bench, args.quick, args.timeout, tiny)
            write(out, render(header, results, order, [n for n in todo if n not in results]))
    total = time.perf_counter() - suite_start
    failed = [n for n in order if not results[n].ok]
    header.append(f"- Total wall time: {total:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    write(out, render(header, results, order, []))
    print(f"[suite] wrote {out} in {total:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
