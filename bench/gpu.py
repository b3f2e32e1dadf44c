"""GPU benchmark: LoRA contrastive training of a real-size Qwen2-VL-2B config (random weights) with gradient caching at
global batch 1,024, and encode throughput: samples/s, tokens/s, peak GPU memory and MFU.

Prepared to finish within a few minutes on one H100 / H200 (issue #9); the numbers go into ``bench/RESULTS.md`` with
the card's name. The model is ``Qwen2VLModel`` built in memory from Qwen2-VL-2B-Instruct's config
(``mmembed.testing.qwen2_vl_2b_random``, as in ``bench/muco.py``: 28 LM layers, hidden 1536; 32-layer vision tower,
unused by text inputs), bf16, SDPA attention, LoRA r16 / alpha 32 on every linear layer of the language model,
last-token pooling; rows are random token ids of ``--seq-len`` tokens (queries and positives; the offline
tokenizer's vocabulary is tiny, so texts are not used).

One training step = ``--batch`` (query, positive) pairs through :class:`mmembed.losses.ContrastiveLoss` with
gradient caching in mini-batches of ``--mini-batch`` (a no-grad pass over all rows, the InfoNCE loss over the whole
batch, then a re-run of each mini-batch with gradients), then an AdamW step; the forward runs under bf16 autocast
as ``Trainer(bf16=True)`` does (the recipes' default on such a GPU; ``--no-autocast``: PEFT's float32 adapter weights
then run every LoRA product in float32), ``--compile`` compiles each decoder layer (``Backbone.compile_layers``, the
recipes' ``--compile_layers``). Encode: ``Embedder.encode`` path without
tokenization (``Embedder.forward`` under ``inference_mode`` on padded batches of ``--encode-batch`` rows).

MFU = model FLOPs / (step time x the card's dense bf16 peak). Model FLOPs of a LoRA step, per token: forward
``2 N`` + the backward's activation gradients ``2 N`` (frozen weights get no weight gradients), with ``N`` the
language model's parameters in its matrices (embeddings excluded), plus attention ``4 * layers * seq * hidden`` per
token forward and twice that backward. Gradient caching's extra no-grad forward is recomputation and is not counted
(it lowers MFU; ``--mini-batch 0`` trains without caching, if the batch fits).

    python bench/gpu.py                       # on the GPU machine (defaults: batch 1024, mini-batch 128, 128 tokens)
    python bench/gpu.py --compile --mini-batch 256   # the best row of bench/RESULTS.md (H200: MFU 28.2%)
    python bench/gpu.py --device cpu --layers 2 --batch 8 --mini-batch 4 --seq-len 16 --steps 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: dense bf16 peak FLOP/s by card name (no sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def build(args: argparse.Namespace):
    import torch

    from mmembed import lora
    from mmembed.inputs import PromptTemplate
    from mmembed.testing import qwen2_vl_2b_random

    embedder = qwen2_vl_2b_random(PromptTemplate(), "last", layers=args.layers, dtype=args.dtype, device=args.device,
                                  seed=0)
    base = embedder.backbone.model
    for p in base.parameters():
        p.requires_grad_(False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = lora.lora_config(base, r=16, alpha=32, dropout=0.0, target_modules=targets)
    embedder.backbone.model = lora.attach(base, config)
    embedder.train()
    torch.manual_seed(0)
    return embedder


def rows(n: int, seq_len: int, vocab: int, device: str, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(300, vocab, (n, seq_len), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "keys": torch.arange(n, device=device) + seed * n, "images_per_sample": torch.zeros(n, dtype=torch.long)}


def language_matrix_params(embedder) -> int:
    """Parameters in the language model's linear layers (LoRA excluded): what the 2N-per-token rule counts."""
    from torch import nn

    from mmembed import lora

    model = lora.base_model(embedder.backbone.model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    total = 0
    for name, module in decoder.named_modules():
        if isinstance(module, nn.Linear) and "lora_" not in name:
            total += module.weight.numel()
    return total


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=None, help="shrink LM and vision tower (smoke runs)")
    parser.add_argument("--batch", type=int, default=1024, help="pairs per step")
    parser.add_argument("--mini-batch", type=int, default=128, help="gradient-caching rows per mini-batch (0: off)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--encode-batch", type=int, default=256)
    parser.add_argument("--encode-rows", type=int, default=4096)
    parser.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast around forward and backward, as Trainer(bf16=True) runs (default: on CUDA)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each decoder layer (nn.Module.compile; compilation happens in the warm-up)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (default: by name)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    return parser.parse_args()


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def measure_training(args: argparse.Namespace, embedder, autocast, card: str, peak: float | None) -> dict:
    """Median seconds of a training step after the warm-up, its peak GPU memory, throughput and MFU."""
    import torch

    from mmembed.losses import ContrastiveLoss, InfoNCELoss

    cuda = args.device.startswith("cuda")
    text = embedder.backbone.config.get_text_config()
    n_params = language_matrix_params(embedder)
    loss_fn = ContrastiveLoss(embedder, InfoNCELoss(temperature=0.02),
                              mini_batch_size=args.mini_batch or None).to(args.device)
    trainable = [p for p in loss_fn.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    def step(i: int) -> float:
        batch = {"anchor": rows(args.batch, args.seq_len, text.vocab_size, args.device, 2 * i),
                 "positive": rows(args.batch, args.seq_len, text.vocab_size, args.device, 2 * i + 1)}
        sync(cuda)
        start = time.perf_counter()
        with autocast:  # as Trainer(bf16=True): the forward under autocast, backward outside
            out = loss_fn(**batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(cuda)
        return time.perf_counter() - start

    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_memory = torch.cuda.memory_allocated()
    times = [step(args.warmup + i) for i in range(args.steps)]
    peak_memory = (torch.cuda.max_memory_allocated() - base_memory) / 2**20 if cuda else float("nan")
    seconds = sorted(times)[len(times) // 2]
    tokens = 2 * args.batch * args.seq_len
    attention = 4 * text.num_hidden_layers * args.seq_len * text.hidden_size  # QK^T + AV, not halved for causality
    flops = tokens * (4 * n_params + 3 * attention)
    return {"card": card, "compiled": args.compile, "autocast": args.autocast, "layers": text.num_hidden_layers,
            "batch": args.batch, "mini_batch": args.mini_batch,
            "seq_len": args.seq_len, "step_seconds": round(seconds, 3),
            "samples_per_second": round(args.batch / seconds, 1),
            "tokens_per_second": round(tokens / seconds), "peak_train_memory_mb": round(peak_memory) if cuda else None,
            "model_tflops_per_step": round(flops / 1e12, 2), "achieved_tflops": round(flops / seconds / 1e12, 1),
            "mfu": round(flops / seconds / peak, 4) if peak else None}


def measure_encode(args: argparse.Namespace, embedder, autocast) -> dict:
    """Rows/s and tokens/s of the forward pass in eval mode: best of two passes over ``--encode-rows`` rows."""
    import torch

    cuda = args.device.startswith("cuda")
    vocab_size = embedder.backbone.config.get_text_config().vocab_size
    embedder.eval()
    encode_rows = rows(args.encode_rows, args.seq_len, vocab_size, args.device, 999)
    with torch.inference_mode(), autocast:
        def encode_all() -> float:
            sync(cuda)
            start = time.perf_counter()
            for i in range(0, args.encode_rows, args.encode_batch):
                embedder({k: v[i: i + args.encode_batch] for k, v in encode_rows.items()})
            sync(cuda)
            return time.perf_counter() - start

        embedder({k: v[: args.encode_batch] for k, v in encode_rows.items()})  # warm-up
        seconds = min(encode_all() for _ in range(2))
    return {"encode_rows_per_second": round(args.encode_rows / seconds, 1),
            "encode_tokens_per_second": round(args.encode_rows * args.seq_len / seconds)}


def main() -> int:
    args = parse_args()

    import torch

    cuda = args.device.startswith("cuda")
    if args.autocast is None:
        args.autocast = cuda
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.autocast)
    card = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in card), None)
    embedder = build(args)
    if args.compile:
        embedder.backbone.compile_layers()
    result = measure_training(args, embedder, autocast, card, peak)
    result.update(measure_encode(args, embedder, autocast))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
