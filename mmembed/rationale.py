"""Rationale mode (GRACE): the model writes a rationale for its input, and the embedding pools input + rationale.

:class:`RationaleConfig` is saved with the model (``mmembed_config.json``), so a GRACE model encodes the way it was
trained. Decoding is deterministic: greedy (the default) or contrastive search
(:func:`~mmembed.generation.contrastive_search`), never sampled, so the same input always gives the same embedding
(the public GRACE evaluation samples at temperature 1.0, so its embeddings are random). Generation is batched with
left padding; :func:`generate_rationales` works on token ids, so the rationale's exact tokens (ending in the model's
end-of-turn token when it finished) are what the pooler sees, as in training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .generation import contrastive_search

#: GRACE's system prompt (training, reward and evaluation), verbatim from its ``process_data.py``.
GRACE_SYSTEM_PROMPT = ("Read and analyze the following text, then you need to provide your reasoning within "
                       "<think></think> tags. Finally, generate a comprehensive understanding of this text.")

DECODINGS = ("greedy", "contrastive")
#: a rationale whose ROUGE-L F1 with its input reaches this restates the input rather than explaining it (the
#: untrained SmolLM2's explanations score about 0.2; an echo with its final full stop dropped scores 1.0)
RESTATEMENT_THRESHOLD = 0.6
_WORD = re.compile(r"\w+")
_TAG = re.compile(r"</?think>")


@dataclass
class RationaleConfig:
    """How a rationale is generated before pooling.

    Args:
        max_new_tokens: the rationale's length limit (GRACE trains with up to 2048; short limits keep CPU runs fast).
        decoding: ``"greedy"`` or ``"contrastive"`` (contrastive search; both deterministic).
        batch_size: prompts generated together.
        penalty_alpha: contrastive search's degeneration-penalty weight alpha (``decoding="contrastive"`` only).
        top_k: contrastive search's number of candidates per step (``decoding="contrastive"`` only).
    """

    max_new_tokens: int = 128
    decoding: str = "greedy"
    batch_size: int = 16
    penalty_alpha: float = 0.6
    top_k: int = 4

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"RationaleConfig.max_new_tokens={self.max_new_tokens}; it must be at least 1.")
        if self.decoding not in DECODINGS:
            raise ValueError(f"RationaleConfig.decoding={self.decoding!r}; choose one of {DECODINGS}.")
        if self.batch_size < 1:
            raise ValueError(f"RationaleConfig.batch_size={self.batch_size}; it must be at least 1.")
        if not 0.0 <= self.penalty_alpha <= 1.0:
            raise ValueError(f"RationaleConfig.penalty_alpha={self.penalty_alpha}; it must lie in [0, 1] (0.6 is "
                             f"the usual value).")
        if self.top_k < 1:
            raise ValueError(f"RationaleConfig.top_k={self.top_k}; it must be at least 1 (4 to 8 are usual).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RationaleConfig:
        return cls(**data)


def stop_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """Token ids that end a rationale: the generation config's EOS ids and the tokenizer's EOS token."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the model has no end-of-sequence token (generation_config.eos_token_id or the "
                         "tokenizer's eos_token); set one so that rationales can end.")
    return ids


@torch.no_grad()
def generate_rationales(model: nn.Module, tokenizer, prompts: Sequence[Sequence[int]], config: RationaleConfig,
                        *, synced_gpus: bool = False, min_batches: int = 0, show_progress_bar: bool = False
                        ) -> list[list[int]]:
    """Rationale token ids for each prompt (token ids of the rendered prompt, ending in the generation prompt).

    Each rationale ends with a stop token when the model finished within ``config.max_new_tokens``. Prompts are
    generated ``config.batch_size`` at a time, left-padded. ``synced_gpus`` (DeepSpeed ZeRO-3) keeps every process
    generating until all are done; ``min_batches`` runs extra (repeated) batches so that every process makes the same
    number of ``generate`` calls.
    """
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        real = list(range(0, len(prompts), config.batch_size))
        starts = real + [None] * max(0, min_batches - len(real))
        for start in tqdm(starts, desc="Generating rationales", unit="batch", disable=not show_progress_bar):
            chunk = [list(p) for p in prompts[start:start + config.batch_size]] if start is not None else \
                [list(prompts[0]) if len(prompts) else [pad]]  # a padding batch, for lockstep
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            if config.decoding == "contrastive":
                generated = contrastive_search(model, ids, mask, alpha=config.penalty_alpha, top_k=config.top_k,
                                               max_new_tokens=config.max_new_tokens, eos_token_id=stops,
                                               pad_token_id=pad, synced_gpus=synced_gpus)
            else:
                generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=config.max_new_tokens,
                                           do_sample=False, num_beams=1, eos_token_id=stops, pad_token_id=pad,
                                           synced_gpus=synced_gpus, temperature=None, top_p=None,
                                           top_k=None)[:, width:]
            if start is not None:
                out += [_until_stop(row, stops) for row in generated.tolist()]
    finally:
        model.train(training)
    return out


def _until_stop(row: list[int], stops: list[int]) -> list[int]:
    """The generated ids up to and including the first stop token (what follows is padding)."""
    for k, token in enumerate(row):
        if token in stops:
            return row[:k + 1]
    return row


def cache_key(prompt: Sequence[int], config: RationaleConfig) -> str:
    """Key of a prompt's rationale in the encode cache: its token ids and the decoding settings."""
    settings: tuple = (config.max_new_tokens, config.decoding)
    if config.decoding == "contrastive":
        settings += (config.penalty_alpha, config.top_k)
    text = repr((tuple(prompt), *settings))
    return hashlib.sha256(text.encode()).hexdigest()


def _words(text: str) -> list[str]:
    return _WORD.findall(_TAG.sub(" ", text).lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of the two texts' lowercased words (``<think>`` tags dropped),
    ``2 * lcs / (len(candidate) + len(reference))``; 0 when either has no word."""
    a, b = _words(candidate), _words(reference)
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return 2.0 * previous[-1] / (len(a) + len(b))


def restatement_stats(rationales: Sequence[str], inputs: Sequence[str],
                      threshold: float = RESTATEMENT_THRESHOLD) -> dict[str, float]:
    """How far ``rationales`` are from restating their ``inputs``: the share whose :func:`rouge_l` with the input is
    at least ``threshold`` (``restatement_share``), the mean ROUGE-L and the mean number of words."""
    if len(rationales) != len(inputs) or not inputs:
        raise ValueError(f"{len(rationales)} rationales for {len(inputs)} inputs: give one rationale per input.")
    scores = [rouge_l(r, t) for r, t in zip(rationales, inputs)]
    return {"restatement_share": sum(v >= threshold for v in scores) / len(scores),
            "rouge_l": sum(scores) / len(scores),
            "rationale_words": sum(len(_words(r)) for r in rationales) / len(rationales)}
