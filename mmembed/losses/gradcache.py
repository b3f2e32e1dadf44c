"""Gradient caching for contrastive losses: large batches in the memory of a mini-batch.

A contrastive loss needs every embedding of the batch at once, but not every activation. The embeddings are computed
mini-batch by mini-batch under *non-reentrant activation checkpointing*: the forward keeps only each mini-batch's
inputs and its embeddings; the loss sees all embeddings; in the single backward pass autograd first computes the
loss's gradient with respect to the embeddings (the "cache"), then re-runs one mini-batch at a time and back-propagates
that cached gradient through it, with the RNG state replayed so dropout matches. That is GradCache (Gao et al., 2021)
expressed inside autograd: one forward call and one ordinary backward per step, so it composes with DDP, DeepSpeed
ZeRO, LoRA, gradient checkpointing and Trainer's gradient accumulation, with no custom training loop and no
backward hooks.

Mini-batches are chosen by count (``mini_batch_size``) or by padded-token budget (``mini_batch_tokens``). Multimodal
batches are sliced per sample: ``pixel_values`` rows and ``image_grid_thw`` / ``image_sizes`` rows go with the
samples whose images they are (``images_per_sample``, recorded by the collator).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IMAGES_PER_SAMPLE = "images_per_sample"


def split_points(attention_mask: Tensor, mini_batch_size: int | None, mini_batch_tokens: int | None) -> list[int]:
    """Sample boundaries ``[0, ..., n]`` of consecutive mini-batches under a count and a padded-token budget."""
    n = attention_mask.shape[0]
    lengths = attention_mask.sum(1).tolist()
    points, start, longest = [0], 0, 0
    for i in range(n):
        size, longest = i - start + 1, max(longest, lengths[i])
        too_many = mini_batch_size is not None and size > mini_batch_size
        too_long = mini_batch_tokens is not None and size > 1 and size * longest > mini_batch_tokens
        if too_many or too_long:  # sample i starts the next mini-batch
            points.append(i)
            start, longest = i, lengths[i]
    points.append(n)
    return points


def slice_batch(batch: dict[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    """Samples ``start:stop`` of a tokenized (multimodal) batch, with all-padding columns trimmed."""
    n = batch["input_ids"].shape[0]
    per_sample = batch.get(IMAGES_PER_SAMPLE)
    out: dict[str, Tensor] = {}
    if per_sample is not None:
        per_sample = per_sample.tolist()
        first_image, stop_image = sum(per_sample[:start]), sum(per_sample[:stop])
        n_images = sum(per_sample)
    for key, value in batch.items():
        if not isinstance(value, Tensor) or value.dim() == 0:
            out[key] = value
        elif key == "pixel_values" and per_sample is not None:
            if "image_grid_thw" in batch:  # flattened patches (Qwen-VL family): rows per image = t * h * w
                rows = batch["image_grid_thw"].prod(-1).tolist()
                out[key] = value[sum(rows[:first_image]): sum(rows[:stop_image])]
            else:  # one entry per image
                out[key] = value[first_image:stop_image]
        elif per_sample is not None and value.shape[0] == n_images and key != IMAGES_PER_SAMPLE and n_images != n:
            out[key] = value[first_image:stop_image]
        elif value.shape[0] == n:
            out[key] = value[start:stop]
        else:
            raise ValueError(f"cannot split batch key {key!r} of shape {tuple(value.shape)} by sample; record "
                             f"'{IMAGES_PER_SAMPLE}' in the batch or use mini_batch_size=None.")
    mask = out["attention_mask"]
    keep = mask.bool().any(0)
    if not bool(keep.all()):
        columns = keep.nonzero().flatten()
        lo, hi = int(columns[0]), int(columns[-1]) + 1
        for key, value in out.items():  # every per-token tensor (ids, mask, token types ...)
            if isinstance(value, Tensor) and value.shape == mask.shape:
                out[key] = value[:, lo:hi]
    return out


def cached_embed(embed: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]], batch: dict[str, Tensor],
                 mini_batch_size: int | None = None, mini_batch_tokens: int | None = None) -> tuple[Tensor, Tensor]:
    """``embed(batch)`` computed mini-batch by mini-batch with gradient caching (see the module docstring).

    Without grad (evaluation) or without mini-batch limits it is a plain ``embed(batch)``.
    """
    if not torch.is_grad_enabled() or (mini_batch_size is None and mini_batch_tokens is None):
        return embed(batch)
    points = split_points(batch["attention_mask"], mini_batch_size, mini_batch_tokens)
    vectors, counts = [], []
    for start, stop in itertools.pairwise(points):
        part = slice_batch(batch, start, stop)
        v, c = checkpoint(embed, part, use_reentrant=False, preserve_rng_state=True)
        vectors.append(v)
        counts.append(c)
    return torch.cat(vectors), torch.cat(counts)
