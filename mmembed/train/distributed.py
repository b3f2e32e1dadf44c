"""Distributed set-up that also works on CPU-only hosts, and a clean exit.

On a host without CUDA, ``accelerate launch`` (DDP or DeepSpeed) leaves the process-group backend unset; accelerate
then sizes DeepSpeed's batch for one process and fails ("train_batch_size is not equal to micro_batch_per_gpu *
gradient_acc_step * world_size"). Defaulting ``TrainingArguments.ddp_backend`` to ``gloo`` there fixes DDP and
DeepSpeed ZeRO-2/3; plain DDP also needs ``ACCELERATE_USE_CPU`` (set by :func:`use_cpu_processes`, which
``mmembed.train.run.parse_recipe_args`` calls), without which accelerate initialises the process group but runs
undistributed (no gradient averaging: the replicas drift).
torch + gloo may abort at interpreter exit unless the process group is destroyed after the model is freed.
"""

from __future__ import annotations

import gc
import os
from dataclasses import field
from typing import Any

import torch

from ..parallel import is_zero3


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_defaults() -> dict:
    """Parser defaults for the training arguments (no side effect): bf16 mixed precision (autocast, float32 master
    weights) where a CUDA device supports it, as TRL's configs default to (on an H200 it ran the Qwen2-VL-2B LoRA
    step 1.35x faster than float32 adapters, ``bench/RESULTS.md``); the gloo backend on CPU-only multi-process runs.
    (Pinned memory is off without an accelerator by the argument classes' own default, :func:`pin_memory_field`.)"""
    defaults: dict = {"bf16": bf16_available()}
    if launched_distributed() and not torch.cuda.is_available():
        defaults["ddp_backend"] = "gloo"
    return defaults


def use_cpu_processes() -> bool:
    """On a CPU-only host launched with several processes under plain DDP (not DeepSpeed), set
    ``ACCELERATE_USE_CPU=true`` in the environment, before the training arguments are made: without it accelerate
    leaves the run undistributed (``DistributedType.NO``: no DDP wrapper, every process trains its own replica), and
    a config's ``use_cpu: false`` cannot undo it. Returns whether it was set."""
    if not launched_distributed() or torch.cuda.is_available():
        return False
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return False
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return True


def pin_memory_field() -> Any:
    """The ``dataloader_pin_memory`` field of mmembed's training-argument classes: on where torch sees an
    accelerator, off otherwise (pinning on a CPU-only host only warns)."""
    return field(default_factory=accelerator_available, metadata={
        "help": "pinned host memory for batches (default: where torch sees an accelerator; a CPU run only warns)"})


def accelerator_available() -> bool:
    """Whether torch sees an accelerator (CUDA, MPS, XPU...) that pinned host memory serves."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def bf16_available() -> bool:
    """Whether bf16 mixed precision can run here (a CUDA device that supports it); TRL's configs default to bf16
    and refuse to start on a CPU-only host otherwise."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def export_embedder(trainer, embedder, folder) -> None:
    """Save ``embedder`` (LoRA merged) from the main process, gathering ZeRO-3 shards first; all processes wait."""
    import contextlib

    context = contextlib.nullcontext()
    if is_zero3(trainer):
        import deepspeed

        module = trainer.accelerator.unwrap_model(trainer.model)
        context = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with context:
        if trainer.is_world_process_zero():
            embedder.save(folder)
    trainer.accelerator.wait_for_everyone()


def teardown() -> None:
    """Free memory and destroy the process group (the clean-exit fix for gloo); call after dropping the trainer."""
    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
