"""Gradient caching: peak memory and step time of a contrastive training step.

Three configurations of the same LoRA-on-the-language-model step (anchor/positive pairs from STS-B train, InfoNCE,
AdamW): batch 256 with gradient caching in mini-batches of 16, batch 16 uncached, batch 256 uncached. Each runs in
its own process: one warm-up step, then ``--steps`` timed steps (forward, backward, optimizer); peak memory is the
growth of peak RSS during the steps (warm-up included, so memory the allocator keeps from it counts) over the RSS
of the loaded model and data (CPU), or ``torch.cuda.max_memory_allocated`` over the allocation before the steps
(CUDA). Inputs are plain sentences (no prompt template). On CPU the workers run with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_=131072``) so that freed tensors leave RSS: otherwise heap fragmentation, not live tensors,
dominates the peak (measured: batch 128 cached 1477 MB with the default allocator settings, 810 MB with the fixed
threshold, against 1078 / 901 MB for batch 16). Goal: peak memory at batch 256 cached <= 1.5 x that of batch 16.

Run: ``.venv/bin/python bench/gradcache.py`` (default model: the embedded SmolLM2-135M; ``--model`` takes any folder;
``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mmembed.measure import peak_rss_kb, proc_kb, reset_peak_rss

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/senteval/STS/STSBenchmark/sts-train.csv"
CONFIGS = {"256 cached (mini 16)": (256, 16), "16 uncached": (16, None), "256 uncached": (256, None)}


def rows(n: int) -> list[dict]:
    pairs = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        pairs.append({"anchor": {"text": fields[5], "image": None}, "positive": {"text": fields[6], "image": None}})
        if len(pairs) == n:
            return pairs
    raise SystemExit(f"{DATA} has fewer than {n} pairs.")


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    limit = int(args.memory_limit_gb * 2**30)  # fail with an allocation error, not the machine's OOM killer
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import mmembed
    from mmembed import lora
    from mmembed.data.collator import ContrastiveCollator
    from mmembed.inputs import PromptTemplate
    from mmembed.losses import ContrastiveLoss, InfoNCELoss

    torch.manual_seed(0)
    embedder = mmembed.load(args.model, template=PromptTemplate(), dtype=args.dtype, device=args.device)
    base = embedder.backbone.model
    for p in base.parameters():
        p.requires_grad_(False)
    embedder.backbone.model = lora.attach(base, lora.lora_config(base, r=16, alpha=32, dropout=0.0))
    loss = ContrastiveLoss(embedder, InfoNCELoss(temperature=0.03), mini_batch_size=args.mini_batch)
    optimizer = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=1e-4)
    collator = ContrastiveCollator(embedder.backbone)
    batches = [collator(rows(args.batch * (args.steps + 1))[k * args.batch:(k + 1) * args.batch])
               for k in range(args.steps + 1)]
    cuda = args.device.startswith("cuda")

    def step(batch: dict) -> float:
        batch = {c: {k: v.to(args.device) for k, v in b.items()} for c, b in batch.items()}
        out = loss(**batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return float(out["loss"])

    hwm = reset_peak_rss()  # peak over all steps, above the memory of the loaded model and data
    rss_base = proc_kb("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    try:
        step(batches[0])  # warm-up (not timed): allocator, optimizer state
        start = time.perf_counter()
        for batch in batches[1:]:
            step(batch)
    except (MemoryError, RuntimeError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        print(json.dumps({"error": f"out of memory (address-space limit {args.memory_limit_gb:g} GB)"}))
        return
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "step_s": seconds, "rss_mb": max(peak_rss_kb(hwm) - rss_base, 0) / 1024,
        "cuda_mb": (torch.cuda.max_memory_allocated() - gpu_base) / 2**20 if cuda else None}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="address-space limit per worker (default: 75%% of the machine's RAM)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--mini-batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.model is None:
        from mmembed.defaults import gguf_path
        from mmembed.gguf import convert_gguf

        args.model = str(convert_gguf(gguf_path()))
    if args.memory_limit_gb is None:
        args.memory_limit_gb = 0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if args.worker:
        worker(args)
        return 0
    results = {}
    for name, (batch, mini) in CONFIGS.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--device", args.device, "--dtype",
               args.dtype, "--steps", str(args.steps), "--batch", str(batch), "--memory-limit-gb",
               str(args.memory_limit_gb)]
        cmd += ["--mini-batch", str(mini)] if mini else []
        # glibc keeps freed tensor blocks in its heap (its mmap threshold grows after frees), so CPU peak RSS
        # would count fragmentation; a fixed 128 KiB threshold returns large blocks and RSS tracks live memory.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"  {results[name]}", file=sys.stderr, flush=True)
    key = "cuda_mb" if args.device.startswith("cuda") else "rss_mb"
    small = results["16 uncached"][key]
    print(f"{args.device}, {args.dtype}, model {args.model}, {args.steps} timed steps")
    print(f"{'configuration':22} {'step s':>8} {'peak MB':>9} {'x batch-16 memory':>18}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:22} {r['error']}")
            continue
        print(f"{name:22} {r['step_s']:8.2f} {r[key]:9.0f} {r[key] / max(small, 1e-9):18.2f}")
    ratio = results["256 cached (mini 16)"][key] / max(small, 1e-9)
    print(f"goal: 256 cached <= 1.5 x batch 16 memory: {ratio:.2f} -> {'MET' if ratio <= 1.5 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
