"""Shared-prompt KV caching for ``encode``.

With a causal decoder, the tokens every input shares at the start (system prompt, chat header, instruction) have the
same keys and values in every sequence. They are run once; each batch then runs only its own tokens on top of a
copy of that cache. The result is the uncached computation (same tokens, same positions), provided the pooler does
not read the prefix's states (last-token, special-token and prefix-excluding mean poolers) and the tokenization of
``prefix + text`` starts with the tokenization of ``prefix`` (checked per input; inputs that fail take the normal
path).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class _PrefixOnlyLayer(DynamicLayer):
    """A cache layer that prepends the prefix's keys / values but does not keep the batch's own: an embedding
    forward never decodes further, so holding every layer's keys and values until the end would only cost memory."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class SharedPrefix:
    """The keys and values of a token prefix, computed once by ``backbone``'s model."""

    def __init__(self, backbone, prefix_ids: list[int]) -> None:
        self.ids = list(prefix_ids)
        model = backbone.body(backbone.model)
        config = backbone.config
        cache = DynamicCache(config=config)
        ids = torch.tensor([self.ids], device=backbone.device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), **{backbone.cache_argument: cache},
              use_cache=True, return_dict=True)
        self.config = config
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def __len__(self) -> int:
        return len(self.ids)

    def cache_for(self, batch_size: int) -> DynamicCache:
        """A fresh cache holding the prefix for ``batch_size`` sequences (the model appends to it in place)."""
        data = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in self.layers]
        cache = DynamicCache(ddp_cache_data=data, config=self.config)
        for layer in cache.layers:
            if type(layer) is DynamicLayer:  # sliding-window and other layer kinds keep their own behaviour
                layer.__class__ = _PrefixOnlyLayer
        return cache

    def model_inputs(self, attention_mask: Tensor, cache_argument: str) -> dict:
        """Cache, full attention mask and positions for a right-padded batch of suffixes."""
        batch_size = attention_mask.shape[0]
        prefix_mask = torch.ones(batch_size, len(self), dtype=attention_mask.dtype, device=attention_mask.device)
        positions = len(self) + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return {"attention_mask": torch.cat([prefix_mask, attention_mask], dim=1), "position_ids": positions,
                cache_argument: self.cache_for(batch_size), "use_cache": True}


def common_prefix_length(ids: list[int], prefix: list[int], keep_last: bool = True) -> int:
    """How many leading tokens ``ids`` shares with ``prefix`` (with ``keep_last``, leaving at least one token of
    ``ids`` after them)."""
    n = 0
    for a, b in zip(ids[: len(ids) - 1] if keep_last else ids, prefix):
        if a != b:
            break
        n += 1
    return n


def shared_token_prefix(sequences: list[list[int]], prefix: list[int], slack: int = 2) -> tuple[int, list[int]]:
    """The token prefix to cache for ``sequences`` rendered after the text prefix tokenized as ``prefix``.

    The last ``slack`` tokens of ``prefix`` may merge with the text (a trailing space joins the next word in BPE),
    so the cached prefix is the longest one that every member shares. Returns ``(length, members)``: positions in
    ``sequences`` that start with those ``length`` tokens (others share less and are not cached).
    """
    lengths = [common_prefix_length(ids, prefix) for ids in sequences]
    floor = max(1, len(prefix) - slack)
    members = [k for k, n in enumerate(lengths) if n >= floor]
    return (min(lengths[k] for k in members) if members else 0), members
