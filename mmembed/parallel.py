"""What the floors below ``train`` need to know about a multi-process training run (kept here so that they do not
import :mod:`mmembed.train`): whether DeepSpeed ZeRO-3 shards the weights, in which case every process must run the
same number of forward passes (``synced_gpus`` generation, the GRACE reward's lockstep, gathering before a save)."""

from __future__ import annotations


def is_zero3(trainer) -> bool:
    """Whether ``trainer`` (a ``transformers.Trainer``) runs under DeepSpeed ZeRO-3 (weights sharded)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and plugin.zero_stage == 3)
