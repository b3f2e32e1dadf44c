"""Special embedding tokens such as MuCo's ``<|emb|>`` and ``<|mask|>``: added to the tokenizer, with rows in the
language model's input embeddings.

Typical use, before attaching LoRA::

    ids = add_special_tokens(embedder)                       # ["<|emb|>", "<|mask|>"] -> their ids
    config = lora.lora_config(embedder.backbone.model, trainable_token_indices=ids)
    embedder.backbone.model = lora.attach(embedder.backbone.model, config)

Only the rows of ``ids`` are then trained (PEFT's trainable tokens); a merged export folds them into the saved
embedding matrix and an adapter-only save stores them in the adapter.

The embedding matrix only ever grows, to ``len(tokenizer)``; the added rows are the mean of the existing rows, as
transformers' mean resizing initialises them, but exactly (without its tiny random noise), so the same base model
and tokenizer always give the same matrix: :meth:`mmembed.backbone.Backbone.load` rebuilds it that way under an
adapter-only folder, whose tokenizer holds the added tokens while the base model does not. A token whose id falls
in rows the checkpoint already has (vocabularies padded to a multiple, as Qwen's) keeps the checkpoint's row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import lora
from .parallel import full_shape, gathered

logger = logging.getLogger(__name__)

EMB_TOKEN = "<|emb|>"
MASK_TOKEN = "<|mask|>"
DEFAULT_TOKENS = (EMB_TOKEN, MASK_TOKEN)


def add_special_tokens(model: Any, tokens: str | Sequence[str] = DEFAULT_TOKENS) -> list[int]:
    """Add the ``tokens`` the tokenizer lacks as additional special tokens and grow the input embeddings to match.

    ``model`` is an :class:`~mmembed.embedder.Embedder` or a :class:`~mmembed.backbone.Backbone` (for a
    vision-language model the processor's tokenizer gets the tokens and the language model's embeddings grow). Returns
    the ids of ``tokens``, in order; calling it again adds nothing and returns the same ids. Tokens must be added
    before a LoRA adapter is attached (the embeddings of a PEFT model are not resized).
    """
    backbone = getattr(model, "backbone", model)
    tokenizer = backbone.tokenizer
    tokens = [tokens] if isinstance(tokens, str) else list(tokens)
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError(f"tokens={tokens!r}: give one or more non-empty token strings.")
    vocab = tokenizer.get_vocab()
    missing = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if missing:
        if lora.has_adapter(backbone.model):
            raise ValueError(f"cannot add {missing} to a model with a LoRA adapter: add the special tokens before "
                             f"attaching the adapter (their rows are then made trainable through "
                             f"lora.lora_config(..., trainable_token_indices=ids)).")
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
        logger.info("added special tokens %s to the tokenizer (now %d tokens).", missing, len(tokenizer))
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    grow_input_embeddings(backbone.model, len(tokenizer))
    backbone._prefix_cache.clear()  # cached prefixes may spell a token that is now special
    pooler = getattr(model, "pooler", None)
    if pooler is not None:
        pooler.bind(tokenizer)
    return ids


def grow_input_embeddings(model: nn.Module, num_tokens: int) -> bool:
    """Give the (language) model's input embeddings ``num_tokens`` rows when it has fewer; never shrinks.

    The new rows are the float32 mean of the existing rows (cast to the weights' dtype); an untied output embedding
    (LM head), when the model has one, grows the same way. ``config`` (the text config's ``vocab_size``) follows.
    The global random state is left untouched. Returns whether the embeddings grew.
    """
    base = lora.base_model(model)
    embeddings = base.get_input_embeddings()
    old = full_shape(embeddings.weight)[0]
    if num_tokens <= old:
        return False
    if lora.has_adapter(model):
        raise ValueError(f"the input embeddings ({old} rows) are smaller than the tokenizer ({num_tokens} tokens), and "
                         f"the embeddings of a model with a LoRA adapter cannot be resized: resize the base model "
                         f"before attaching the adapter.")
    output = base.get_output_embeddings()
    tied = output is not None and output.weight is embeddings.weight
    with torch.no_grad():
        olds = [embeddings.weight] + ([output.weight] if output is not None and not tied else [])
        with gathered(olds):
            means = [_row_mean(weight) for weight in olds]
        device = embeddings.weight.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # transformers' non-mean init draws random numbers; they are overwritten below
            base.resize_token_embeddings(num_tokens, mean_resizing=False)
        layers = [base.get_input_embeddings()]
        if output is not None and not tied:
            layers.append(base.get_output_embeddings())
        for layer, mean in zip(layers, means):
            with gathered([layer.weight], modify=True):
                if layer.weight.shape[0] >= num_tokens:
                    layer.weight[old:num_tokens] = mean.to(layer.weight.dtype)
    logger.info("grew the input embeddings of %s from %d to %d rows (new rows: the mean of the old ones).",
                type(base).__name__, old, num_tokens)
    return True


def _row_mean(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().to(torch.float32).mean(dim=0)
