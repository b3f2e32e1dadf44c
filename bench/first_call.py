"""Time to the first embedding of the default model on a fresh machine: ``import mmembed; mmembed.encode([...])`` in
a new process with an empty cache (``MMEMBED_CACHE`` in a temporary folder, so the GGUF -> plain-folder conversion
is included) and the network refused (any socket connect raises), then the same call again with the cache filled.

Goal (issue #9): under a minute for the first call, conversion included, offline.

    python bench/first_call.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CHILD = """
import socket, time
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
start = time.perf_counter()
import mmembed
vectors = mmembed.encode(["A man is playing a guitar.", "A person plays an instrument."])
assert vectors.shape == (2, 576), vectors.shape
from mmembed import defaults, lora
model = defaults.default_embedder()
print("adapter", lora.has_adapter(model.backbone.model), "seconds", round(time.perf_counter() - start, 1))
"""


def run(cache: str) -> tuple[float, str]:
    env = {**os.environ, "MMEMBED_CACHE": cache, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the first call failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="fresh-cache runs (the slowest is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        fresh = []
        for _ in range(args.repeats):
            for entry in os.listdir(cache):
                subprocess.run(["rm", "-rf", os.path.join(cache, entry)], check=True)
            fresh.append(run(cache))
        warm = run(cache)
    worst = max(fresh)
    print("| call | wall s (process start to vectors) | child |")
    print("|---|---|---|")
    print(f"| first (empty cache: GGUF conversion + adapter) | {worst[0]:.1f} | {worst[1]} |")
    print(f"| second (cache filled) | {warm[0]:.1f} | {warm[1]} |")
    print(f"goal: first call < 60 s: {'met' if worst[0] < 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
