"""What the floors below ``train`` need to know about a multi-process training run (kept here so that they do not
import :mod:`mmembed.train`): whether DeepSpeed ZeRO-3 shards the weights, in which case every process must run the
same number of forward passes (``synced_gpus`` generation, the GRACE reward's lockstep, gathering before a save).

A model created under ``deepspeed.zero.Init`` (which ``transformers`` uses in ``from_pretrained`` whenever a ZeRO-3
config is active, e.g. once a ``TrainingArguments`` with one exists) holds on each process only an empty placeholder
per parameter: ``weight.shape`` is ``(0,)`` and the real shape is ``weight.ds_shape``. Code that reads the shape or
the values of a parameter outside a forward pass uses :func:`full_shape` and :func:`gathered`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch


def is_zero3(trainer) -> bool:
    """Whether ``trainer`` (a ``transformers.Trainer``) runs under DeepSpeed ZeRO-3 (weights sharded)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and plugin.zero_stage == 3)


def full_shape(param: torch.Tensor) -> torch.Size:
    """The shape of ``param`` as the model defines it (its ``ds_shape`` when ZeRO-3 partitions it)."""
    shape = getattr(param, "ds_shape", None)
    return torch.Size(shape) if shape is not None else param.shape


def gathered(params: Iterable[torch.Tensor], modify: bool = False) -> contextlib.AbstractContextManager:
    """A context in which the ZeRO-3 partitioned ``params`` are whole on every process (with ``modify``, what
    process 0 writes is partitioned back on exit); a no-op for ordinary parameters."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed  # only reachable when DeepSpeed created the parameters

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)
