"""MuCo multi-turn packing against single-turn batches of the same pairs: training pairs/s and peak memory.

Two training setups on the same (query, target) pairs, the same model, adapter (or full fine-tuning), loss and
optimizer:

- (a) **packed**: ``--packs`` B conversations of one image + K = 7 pairs each (``MultiTurnCollator(max_turns=7)`` +
  ``MultiTurnContrastiveLoss``): the image is encoded once per 7 pairs;
- (b) **single-turn**: the same 7·B pairs as 7·B rows (image + query -> target) through ``ContrastiveCollator`` +
  ``ContrastiveLoss`` with the single-turn MuCo template (``PromptTemplate(text="{text}",
  text_image="{image}{text}", chat=True, system=SYSTEM, response="<|emb|>")``): every query carries its image, as
  single-turn training must. The rows of one image get the same ``query_groups`` / ``positive_groups`` ids, so both
  sides optimise the same InfoNCE (τ = 0.02, the other pairs of one image are not negatives).

A training step is collation (image loading, processor, tokenizer) + forward + backward + AdamW step; the step time
includes collation, and the model-only time (forward + backward + optimizer) is reported too. Pairs/s = 7·B / step.

Data: synthetic scenes of 3-4 objects and a word (``mmembed.synthetic``: ``random_scene``, ``render``), each
with 6 question pairs from the generator's own pair builder (``muco_pairs``: counts, colours, the word) and the
exact caption (the Caption-I2T pair) as the 7th. Rows are taken in order, B per step, a fresh set of packs every step
(the same on both sides). Images: ``--image-size`` px squares (tiny: 112 px, the tiny processor's maximum, 16 visual
tokens; 2B: 640 px, MuCo's shortest side, with MuCo's processor limits 256·28² .. 1280·28² pixels: 529 visual tokens).

Models (``--model``):

- ``tiny`` (default): ``mmembed.testing.build_tiny_qwen2_vl(emb_token=True)`` (2-layer LM, hidden 64; 2-layer vision
  tower, embed 32), CPU, float32;
- ``qwen2-vl-2b-random``: a Qwen2-VL-2B-Instruct-sized ``Qwen2VLForConditionalGeneration`` with random weights
  (``mmembed.testing.qwen2_vl_2b_random``), built in memory from the real config (LM: vocab 151936, hidden 1536,
  28 layers, 12 heads, 2 kv heads, intermediate 8960, rope θ 1e6, M-RoPE sections 16/24/24, tied embeddings;
  vision: depth 32, embed 1280, 16 heads, MLP ratio 4, patch 14, merge 2, out 1536), and the tiny builder's offline
  byte-level tokenizer (a few hundred tokens: texts take about 3x more tokens than with Qwen's real vocabulary) with
  an image-only processor. The embedder holds its ``.model`` (``Qwen2VLModel``), which is what ``mmembed.load``
  gives for a real checkpoint. Meant for a GPU:
  ``--device cuda`` (bf16 by default there; add ``--gradient-checkpointing`` as MuCo does if B is large).
  ``--layers N`` shrinks both the LM and the vision tower to N layers (a CPU smoke run).

Each measurement runs in its own process (this script with ``--worker``): it builds the model, attaches LoRA on the
language model's linear layers (MuCo: r 16, alpha 64, dropout 0.1; ``--full``: every parameter, vision tower
included), runs ``--warmup`` untimed steps, ``--steps`` timed steps, then one untimed profiled step (forward time of
the vision tower through hooks). Peak memory is the growth of peak RSS during warm-up + timed steps over the RSS of
the loaded model and rows (CPU; glibc's mmap threshold fixed so freed tensors leave RSS, as in bench/gradcache.py),
or ``torch.cuda.max_memory_allocated`` over the allocation before the steps (CUDA). The two sides alternate over
``--rounds`` rounds (a b, b a, a b ...) so that load changes on a shared machine hit both; per-side numbers are
medians over rounds, ratios are medians of the per-round ratios.

Run: ``.venv/bin/python bench/muco.py`` (tiny, CPU); on a GPU: ``.venv/bin/python bench/muco.py --model
qwen2-vl-2b-random --device cuda``; CPU smoke run of the 2B code path: ``--model qwen2-vl-2b-random --layers 2
--packs 1 --steps 1 --warmup 0 --rounds 1 --image-size 112``.

Last measured (2026-11-27; tiny, CPU, 1 thread, float32, LoRA, B = 8 packs = 56 pairs a step, 4 timed steps x 4
rounds; the 2 cores were shared with another training job and a test run, so absolute numbers are noisy, the
interleaved ratios less so)::

    side          pairs/s model-only  step s collate s  peak MB vision fwd LM tokens  padded img tok  rows
    packed K=7      122.2      129.0   0.459     0.024      137         1%      5447    5928     128     8
    single-turn      48.9       53.4   1.146     0.099      316         4%      9095   15848     896    56
    per round (a)/(b) pairs/s: 2.36, 2.58, 2.42, 2.64
    (b)/(a) work: LM tokens 1.67x, padded 2.67x, visual tokens 7.00x
    ratio (a)/(b): pairs/s 2.50x (model-only 2.41x), peak memory 0.43x
    goal >= 3x pairs/s at K = 7: NOT MET (2.50x)

The tiny model does not reach 3x, because what packing saves is small for it. The image is encoded once instead of 7
times, but the tiny processor caps images at 112 px (16 visual tokens), and the 2-layer, 32-wide vision tower takes
1-4% of a step. So the step time follows the language model's padded token count. Single-turn rows repeat the system
prompt and chat header, and their batch pads every row to the longest (a retrieval caption: 100+ byte-level
tokens). Per step that is 1.67x the real LM tokens and 2.67x the padded ones (model-only time 2.41x). The tiny BPE
(a few hundred tokens; 3-4 tokens a word, against about 1.3 for Qwen's vocabulary, an estimate) also makes the
texts about 3x longer, which shrinks the image's share further. Packing still uses 0.43x the peak memory.

Same run with 448 px images (``--image-size 448 --rounds 2 --steps 3``; the tiny processor's limit raised, 256
visual tokens an image): (a) 55.0 / (b) 13.9 pairs/s, so **3.95x** (rounds 4.35, 3.54; model-only 3.53x). Peak
memory was 0.27x. LM tokens were 3.10x (padded 3.83x), the vision tower was 15-22% of a step, and collation 17-25%:
single-turn processes every image 7 times. The 2B config at MuCo's 640 px (529 visual tokens an image, 32 vision
layers) is in this image-dominated regime. It has not been measured on a GPU. A CPU smoke run with ``--layers 2
--packs 1 --image-size 112`` (256 visual tokens after the processor's minimum) gave 4.6x and 5.5x in two one-step
runs, which only shows the trend.

GPU (2026-11-27, one NVIDIA H200, torch 2.11 + CUDA 13, transformers 5.24): the full ``qwen2-vl-2b-random`` config
(28 LM layers, 32 vision layers), bf16, LoRA r16, 640 px (529 visual tokens an image), 16 CPU threads for collation.

- ``--packs 8 --gradient-checkpointing --warmup 3 --steps 3 --rounds 3`` (MuCo trains with checkpointing; the run hit
  the session's time limit before the last single-turn round): packed 26.3 / 29.3 / 27.0 pairs/s (1.9-2.1 s a step),
  single-turn 6.8 / 6.2 pairs/s (8.2-9.0 s a step, 2.7-3.2 s of it collation: 56 images processed at 640 px):
  **about 4.2x** (per round 3.87x, 4.73x). The same setting with 1 warm-up step and 2 rounds gave 3.43x (per round
  2.04x, 4.83x: the packed side's first round, 3.7 s a step against 1.7 s in the second, was still warming up) and
  **0.20x the peak GPU memory** (4,383 vs 22,124 MB over the loaded model); LM tokens 3.65x, visual tokens 7x.
- ``--packs 4`` without checkpointing (1 warm-up step, 2 rounds): 2.69x (per round 2.54x, 2.83x; model-only 1.94x),
  peak GPU memory 0.24x (25,191 vs 105,760 MB). At 4 packs the packed step (5.3k LM tokens) is too small to fill the
  GPU, so its token savings show only in part; MuCo's real batches are far larger.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmembed.measure import peak_rss_kb, proc_kb, reset_peak_rss

K = 7  # pairs a pack (MuCo)
POOLING = {"mode": "special_token", "token": "<|emb|>"}
TEMPERATURE = 0.02
SIDES = {"a": "packed K=7", "b": "single-turn"}


# ------------------------------------------------------------------------------------------------------ data


def prepare_rows(out: Path, n: int, image_size: int, seed: int) -> list[dict]:
    """``n`` rows of one image + 7 (query, positive) pairs (see the module docstring)."""
    import numpy as np

    from mmembed import synthetic

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    while len(rows) < n:
        scene = synthetic.random_scene(rng, int(rng.integers(3, 5)), word_prob=1.0, unique=True)
        pairs = synthetic.muco_pairs(scene, rng, K - 1)
        if pairs is None:
            continue
        caption = {"query": synthetic.TASKS_BY_NAME["Caption-I2T"].instruction, "positive": synthetic.caption(scene)}
        path = out / f"{len(rows):06d}.png"
        synthetic.render(scene, image_size, rng=rng).save(path)
        rows.append({"image": str(path), "pairs": [*({"query": p["query"], "positive": p["positive"]} for p in pairs),
                                                   caption]})
    return rows


def single_turn_rows(packs: list[dict]) -> tuple[list[dict], list[int]]:
    """The pairs of ``packs`` as single-turn rows (image + query -> target) and one group id per image."""
    from mmembed.data.collator import content_key

    rows, groups = [], []
    for pack in packs:
        group = content_key(repr(pack["pairs"]), pack["image"])
        for pair in pack["pairs"]:
            rows.append({"anchor": {"text": pair["query"], "image": pack["image"]},
                         "positive": {"text": pair["positive"], "image": None}})
            groups.append(group)
    return rows, groups


# ------------------------------------------------------------------------------------------------------ model


def build_embedder(args: argparse.Namespace):
    import torch

    import mmembed
    from mmembed.data.multiturn import EMB_TOKEN, SYSTEM
    from mmembed.inputs import PromptTemplate
    from mmembed.testing import qwen2_vl_2b_random

    # the single-turn MuCo template (the packed side renders chat messages: the template does not apply there)
    template = PromptTemplate(text="{text}", text_image="{image}{text}", chat=True, system=SYSTEM,
                              response=EMB_TOKEN)
    if args.model == "tiny":
        embedder = mmembed.load(args.model_path, template=template, pooling=POOLING, dtype=args.dtype,
                                device=args.device)
        processor = embedder.backbone.processor.image_processor
        if args.image_size ** 2 > processor.size.longest_edge:  # keep larger images at their size
            processor.size = {"shortest_edge": processor.size.shortest_edge, "longest_edge": args.image_size ** 2}
    else:
        embedder = qwen2_vl_2b_random(template, POOLING, layers=args.layers, dtype=args.dtype, device=args.device,
                                      seed=args.seed)
    torch.manual_seed(args.seed)
    return embedder


def attach_training(embedder, args: argparse.Namespace) -> None:
    from mmembed import lora

    base = embedder.backbone.model
    if args.full:
        for p in base.parameters():
            p.requires_grad_(True)
    else:
        for p in base.parameters():
            p.requires_grad_(False)
        embedder.backbone.model = lora.attach(base, lora.lora_config(base, r=16, alpha=64, dropout=0.1))
    embedder.train()


def vision_tower(embedder):
    from mmembed import lora

    base = lora.base_model(embedder.backbone.model)
    return getattr(base, "visual", None) or getattr(getattr(base, "model", None), "visual", None)


# ------------------------------------------------------------------------------------------------------ worker


def side_loss(embedder, args: argparse.Namespace) -> tuple:
    """The loss and the collate function of side (a) packed or (b) single-turn."""
    import torch

    from mmembed.data.collator import ContrastiveCollator
    from mmembed.data.multiturn import MultiTurnCollator
    from mmembed.losses import ContrastiveLoss, InfoNCELoss, MultiTurnContrastiveLoss

    info_nce = InfoNCELoss(temperature=TEMPERATURE)
    if args.side == "a":
        collator = MultiTurnCollator(embedder.backbone, max_turns=K, seed=args.seed)
        return MultiTurnContrastiveLoss(embedder, info_nce), collator
    single = ContrastiveCollator(embedder.backbone)

    def collate(chunk: list[dict]) -> dict:
        rows, groups = single_turn_rows(chunk)
        batch = single(rows)
        batch["query_groups"] = torch.tensor(groups)
        batch["positive_groups"] = batch["query_groups"].clone()
        return batch
    return ContrastiveLoss(embedder, info_nce), collate


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def to_device(value, device: str):
    import torch

    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value.to(device) if isinstance(value, torch.Tensor) else value


def batch_tokens(batch: dict) -> dict[str, int]:
    """Rows, real and padded tokens, image patches and visual tokens of a batch's anchor and positive columns."""
    tokens = {}
    for column in ("anchor", "positive"):
        b = batch[column]
        tokens[f"{column}_rows"] = int(b["input_ids"].shape[0])
        tokens[f"{column}_tokens"] = int(b["attention_mask"].sum())
        tokens[f"{column}_padded"] = int(b["input_ids"].numel())
        tokens[f"{column}_patches"] = int(b["pixel_values"].shape[0]) if "pixel_values" in b else 0
        if "image_grid_thw" in b:  # visual tokens after the 2x2 merge
            tokens[f"{column}_image_tokens"] = int(b["image_grid_thw"].prod(-1).sum()) // 4
    return tokens


class Steps:
    """Training steps (collation + forward + backward + AdamW step), timed; the first batch's token counts."""

    def __init__(self, loss, collate, optimizer, device: str) -> None:
        self.loss, self.collate, self.optimizer, self.device = loss, collate, optimizer, device
        self.cuda = device.startswith("cuda")
        self.stats: dict[str, list[float]] = {"collate_s": [], "model_s": [], "loss": []}
        self.tokens: dict[str, int] = {}

    def __call__(self, chunk: list[dict], record: bool) -> None:
        start = time.perf_counter()
        batch = self.collate(chunk)
        middle = time.perf_counter()
        batch = to_device(batch, self.device)
        out = self.loss(**batch)
        out["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.cuda)
        end = time.perf_counter()
        if record:
            self.stats["collate_s"].append(middle - start)
            self.stats["model_s"].append(end - middle)
            self.stats["loss"].append(float(out["loss"]))
        if not self.tokens:
            self.tokens = batch_tokens(batch)


def measured_steps(step: Steps, chunks: list[list[dict]], args: argparse.Namespace) -> dict | None:
    """Warm-up + timed steps and their peak memory; None (after printing the error line) when out of memory."""
    import torch

    hwm = reset_peak_rss()
    rss_base = proc_kb("VmRSS")
    if step.cuda:
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    try:
        for chunk in chunks[:args.warmup]:
            step(chunk, False)
        for chunk in chunks[args.warmup:args.warmup + args.steps]:
            step(chunk, True)
    except (MemoryError, RuntimeError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        print(json.dumps({"error": f"out of memory: {str(exc).splitlines()[0][:200]}"}))
        return None
    rss_peak = peak_rss_kb(hwm)
    gpu_peak = torch.cuda.max_memory_allocated() if step.cuda else 0
    return {"rss_mb": max(rss_peak - rss_base, 0) / 1024, "rss_base_mb": rss_base / 1024,
            "cuda_mb": (gpu_peak - gpu_base) / 2**20 if step.cuda else None,
            "cuda_total_mb": gpu_peak / 2**20 if step.cuda else None}


def profiled_step(step: Steps, embedder, chunk: list[dict]) -> dict:
    """One untimed step with the vision tower's forward time measured through hooks."""
    visual = vision_tower(embedder)
    vision = {"s": 0.0, "calls": 0}
    if visual is not None:
        def pre(*_):
            sync(step.cuda)
            vision["t0"] = time.perf_counter()

        def post(*_):
            sync(step.cuda)
            vision["s"] += time.perf_counter() - vision["t0"]
            vision["calls"] += 1

        handles = [visual.register_forward_pre_hook(pre), visual.register_forward_hook(post)]
    start = time.perf_counter()
    step(chunk, False)
    profiled_s = time.perf_counter() - start
    if visual is not None:
        for h in handles:
            h.remove()
    return {"profiled_step_s": profiled_s, "vision_forward_s": vision["s"], "vision_calls": vision["calls"]}


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    if not args.device.startswith("cuda"):  # fail with an allocation error, not the machine's OOM killer
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.threads:
        torch.set_num_threads(args.threads)
    packs = json.loads(Path(args.rows).read_text())
    embedder = build_embedder(args)
    attach_training(embedder, args)
    loss, collate = side_loss(embedder, args)
    if args.gradient_checkpointing:
        loss.gradient_checkpointing_enable()
    params = [p for p in loss.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    n_steps = args.warmup + args.steps + 1  # + 1 profiled step
    chunks = [packs[k * args.packs:(k + 1) * args.packs] for k in range(n_steps)]
    if any(len(c) != args.packs for c in chunks):
        raise SystemExit(f"{len(packs)} packs given, {n_steps * args.packs} needed.")
    step = Steps(loss, collate, optimizer, args.device)
    memory = measured_steps(step, chunks, args)
    if memory is None:
        return
    profile = profiled_step(step, embedder, chunks[-1])
    pairs = K * args.packs
    stats = step.stats
    step_s = [c + m for c, m in zip(stats["collate_s"], stats["model_s"])]
    print(json.dumps({
        "side": args.side, "pairs_per_step": pairs,
        "step_s": statistics.median(step_s), "collate_s": statistics.median(stats["collate_s"]),
        "model_s": statistics.median(stats["model_s"]),
        "pairs_per_s": pairs / statistics.median(step_s),
        "model_pairs_per_s": pairs / statistics.median(stats["model_s"]), **memory, **profile,
        "loss": stats["loss"], "trainable": sum(p.numel() for p in params), "threads": torch.get_num_threads(),
        **step.tokens}))


# ------------------------------------------------------------------------------------------------------ parent


def run_worker(args: argparse.Namespace, side: str, rows_file: Path, model_path: str | None) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--rows", str(rows_file),
           "--model", args.model, "--device", args.device, "--dtype", args.dtype, "--packs", str(args.packs),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--image-size", str(args.image_size),
           "--memory-limit-gb", str(args.memory_limit_gb)]
    cmd += ["--model-path", model_path] if model_path else []
    cmd += ["--layers", str(args.layers)] if args.layers else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--full"] if args.full else []
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    # glibc keeps freed tensor blocks in its heap, so CPU peak RSS would count fragmentation (bench/gradcache.py)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"worker {side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def median_of(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def report(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    mem = "cuda_mb" if args.device.startswith("cuda") else "rss_mb"
    a, b = results["a"], results["b"]
    print(f"\n{args.model} on {args.device}, {args.dtype}, {'full fine-tuning' if args.full else 'LoRA r16'}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}; B = {args.packs} packs = "
          f"{K * args.packs} pairs a step; {args.steps} timed steps x {len(a)} rounds; images {args.image_size} px; "
          f"{a[0]['threads']} threads; trainable {a[0]['trainable']:,}")
    print("per step: LM tokens = anchor + positive tokens (padded: as run); img tok = visual tokens after merge;\n"
          "vision fwd = vision-tower forward share of a profiled step; peak MB = growth over the loaded model")
    print(f"{'side':13}{'pairs/s':>8}{'model-only':>11}{'step s':>8}{'collate s':>10}{'peak MB':>9}"
          f"{'vision fwd':>11}{'LM tokens':>10}{'padded':>8}{'img tok':>8}{'rows':>6}")
    tok = {}
    for side, rs in results.items():
        r0 = rs[0]
        tok[side] = (r0["anchor_tokens"] + r0["positive_tokens"], r0["anchor_padded"] + r0["positive_padded"],
                     r0.get("anchor_image_tokens", 0))
        vis = statistics.median(r["vision_forward_s"] / r["profiled_step_s"] for r in rs)
        print(f"{SIDES[side]:13}{median_of(rs, 'pairs_per_s'):8.1f}{median_of(rs, 'model_pairs_per_s'):11.1f}"
              f"{median_of(rs, 'step_s'):8.3f}{median_of(rs, 'collate_s'):10.3f}{median_of(rs, mem):9.0f}"
              f"{vis:11.0%}{tok[side][0]:10}{tok[side][1]:8}{tok[side][2]:8}{r0['anchor_rows']:6}")
    per_round = {key: [x[key] / y[key] for x, y in zip(a, b) if y[key]] for key in
                 ("pairs_per_s", "model_pairs_per_s", mem)}
    print("per round (a)/(b) pairs/s: " + ", ".join(f"{v:.2f}" for v in per_round["pairs_per_s"]))
    speed = statistics.median(per_round["pairs_per_s"])
    model_speed = statistics.median(per_round["model_pairs_per_s"])
    memory = statistics.median(per_round[mem]) if per_round[mem] else float("nan")
    print(f"(b)/(a) work: LM tokens {tok['b'][0] / tok['a'][0]:.2f}x, padded {tok['b'][1] / tok['a'][1]:.2f}x, "
          f"visual tokens {tok['b'][2] / max(tok['a'][2], 1):.2f}x")
    print(f"ratio (a)/(b): pairs/s {speed:.2f}x (model-only {model_speed:.2f}x), peak memory {memory:.2f}x")
    print(f"goal >= 3x pairs/s at K = 7: {'MET' if speed >= 3 else 'NOT MET'} ({speed:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "qwen2-vl-2b-random"), default="tiny")
    parser.add_argument("--packs", type=int, default=8, help="B: packs (images) a step; single-turn: 7*B rows")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=4, help="alternating (a, b) measurement rounds")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="full", action="store_false", help="LoRA on the LM's linear layers (default)")
    mode.add_argument("--full", dest="full", action="store_true", help="train every parameter")
    parser.set_defaults(full=False)
    parser.add_argument("--layers", type=int, default=None,
                        help="qwen2-vl-2b-random: LM layers and vision depth (default: the real 28 / 32)")
    parser.add_argument("--image-size", type=int, default=None, help="image side in px (tiny: 112; 2B: 640)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker (default on CPU: 1; two OpenMP threads on two cores "
                             "that other jobs also use run tiny matmuls ~50x slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="address-space limit per CPU worker (default: 75%% of the machine's RAM)")
    parser.add_argument("--worker", choices=tuple(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.image_size is None:
        args.image_size = 112 if args.model == "tiny" else 640
    if args.threads is None and not args.device.startswith("cuda"):
        args.threads = 1
    if args.memory_limit_gb is None:
        args.memory_limit_gb = 0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if args.worker:
        args.side = args.worker
        worker(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-muco-") as tmp:
        tmp = Path(tmp)
        n = args.packs * (args.warmup + args.steps + 1)
        rows = prepare_rows(tmp / "synthetic", n, args.image_size, args.seed)
        rows_file = tmp / "rows.json"
        rows_file.write_text(json.dumps(rows))
        model_path = None
        if args.model == "tiny":
            from mmembed.testing import build_tiny_qwen2_vl

            model_path = str(build_tiny_qwen2_vl(tmp / "tiny_qwen2_vl", emb_token=True, seed=args.seed))
        results: dict[str, list[dict]] = {"a": [], "b": []}
        for r in range(args.rounds):
            for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                print(f"round {r + 1}/{args.rounds}: {SIDES[side]} ...", file=sys.stderr, flush=True)
                result = run_worker(args, side, rows_file, model_path)
                if result is None:
                    return 1
                if "error" in result:
                    print(f"{SIDES[side]}: {result['error']}")
                    return 1
                print(f"  {result['pairs_per_s']:.1f} pairs/s, step {result['step_s']:.3f} s (collate "
                      f"{result['collate_s']:.3f}), peak {result['rss_mb']:.0f} MB RSS", file=sys.stderr,
                      flush=True)
                results[side].append(result)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
