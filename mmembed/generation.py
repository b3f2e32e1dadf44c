"""Contrastive search (Su et al., NeurIPS 2022; Su & Collier, TMLR 2023): deterministic decoding that avoids
degenerate repetition by penalising candidates whose hidden state resembles one already in the context.

It exists here because transformers 5 removed contrastive search from ``generate`` (it now lives on the Hub as custom
code, which needs the network and ``trust_remote_code``); GRACE's rationale mode
(:class:`~mmembed.rationale.RationaleConfig` with ``decoding="contrastive"``) uses it offline.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache


def _cache_argument(model: nn.Module) -> str:
    """The name under which the model's forward takes its KV cache (``cache`` in transformers 5.2x)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _as_ids(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


@torch.no_grad()
def contrastive_search(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                       alpha: float = 0.6, top_k: int = 4, max_new_tokens: int = 64,
                       eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                       synced_gpus: bool = False) -> torch.LongTensor:
    """The new tokens ``(batch, steps)`` chosen by contrastive search after left-padded prompts.

    At each step, ``x_t = argmax_{v in top-k p(.|x_<t)} (1 - alpha) p(v|x_<t) - alpha max_j cos(h_v, h_{x_j})``,
    where ``h`` are last-layer states of the row's context (prompt and generated tokens, padding excluded) and
    ``h_v`` the state of ``v`` appended to it. One forward per step scores the ``top_k`` candidates of every row on a
    KV cache expanded ``top_k``-fold (``DynamicCache.batch_repeat_interleave``), whose chosen rows are then kept
    (``batch_select_indices``). A row ends at its first EOS token and is ``pad_token_id`` after it; decoding stops
    when every row (every process, with ``synced_gpus``) has ended, or after ``max_new_tokens``. ``alpha=0`` (or
    ``top_k=1``) is greedy decoding. No logits processors (repetition penalty, ...) are applied; put the model in
    eval mode first.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; pass a (batch, tokens) tensor of prompts.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}; it must lie in [0, 1] (0 is greedy, 0.6 is the usual value).")
    if top_k < 1:
        raise ValueError(f"top_k={top_k}; it must be at least 1 (4 to 8 are usual).")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; it must be at least 1.")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(input_ids.shape)}; "
                         f"pass one mask value per prompt token.")
    if not bool(mask[:, -1].all()):
        raise ValueError("attention_mask: every prompt must end at the last position; pad prompts on the left "
                         "(tokenizer.padding_side = 'left').")
    config = getattr(model, "generation_config", None)
    stops = _as_ids(eos_token_id if eos_token_id is not None else getattr(config, "eos_token_id", None))
    pad = pad_token_id if pad_token_id is not None else getattr(config, "pad_token_id", None)
    if pad is None:
        if not stops:
            raise ValueError("no pad_token_id and no eos_token_id: pass pad_token_id so that ended rows can be padded.")
        pad = stops[0]

    batch, rows = input_ids.shape[0], torch.arange(input_ids.shape[0], device=input_ids.device)
    cache, cache_name = DynamicCache(config=model.config), _cache_argument(model)

    def forward(ids: Tensor, full_mask: Tensor, positions: Tensor):
        out = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                    output_hidden_states=True, return_dict=True, **{cache_name: cache})
        return out.logits[:, -1].float(), F.normalize(out.hidden_states[-1].float(), dim=-1)

    logits, context = forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))  # context: unit states (B, T, d)
    stop_ids = torch.tensor(stops, dtype=torch.long, device=input_ids.device)
    ended = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    tokens: list[Tensor] = []
    for _ in range(max_new_tokens):
        probs, candidates = logits.softmax(-1).topk(top_k, dim=-1)  # (B, k)
        positions = mask.sum(-1, keepdim=True)  # each row's next position: its number of real tokens
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        cache.batch_repeat_interleave(top_k)
        step_logits, states = forward(candidates.reshape(-1, 1), mask.repeat_interleave(top_k, dim=0),
                                      positions.repeat_interleave(top_k, dim=0))
        states = states[:, -1].view(batch, top_k, -1)  # h_v of each row's candidates
        similarity = (states @ context.transpose(1, 2)).masked_fill(mask[:, None, :-1] == 0, float("-inf"))
        best = ((1 - alpha) * probs - alpha * similarity.amax(-1)).argmax(-1)
        chosen = rows * top_k + best
        cache.batch_select_indices(chosen)
        logits, context = step_logits[chosen], torch.cat([context, states[rows, best][:, None]], dim=1)
        token = candidates[rows, best].masked_fill(ended, pad)
        tokens.append(token)
        ended |= torch.isin(token, stop_ids)
        unfinished = torch.tensor(float(not ended.all()), device=input_ids.device)
        if synced_gpus:
            dist.all_reduce(unfinished)  # every process keeps stepping until all have ended
        if unfinished.item() == 0:
            break
    return torch.stack(tokens, dim=1)
