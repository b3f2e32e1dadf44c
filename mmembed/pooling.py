"""Poolers: token states ``(batch, seq, dim)`` -> embeddings.

Every pooler reads positions from the attention mask, so left and right padding give the same result. A pooler
returns ``(vectors, counts)``: ``vectors`` has one row per embedding and ``counts[b]`` says how many rows belong
to sequence ``b`` (always 1, except for :class:`SpecialTokenPooler`, which yields one embedding per occurrence
of its token, as MuCo's multi-turn packing needs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from .errors import ModelFolderError
from .files import write_text

CONFIG_NAME = "mmembed_pooling.json"


class MissingTokenError(ValueError):
    """A sequence lacks the token a :class:`SpecialTokenPooler` pools at; ``row`` is its index in the batch."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row


class Pooler(nn.Module):
    """Base class; subclasses set ``mode`` and implement ``pool``."""

    mode: ClassVar[str]
    registry: ClassVar[dict[str, type[Pooler]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        Pooler.registry[cls.mode] = cls

    def forward(self, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.pool(hidden, batch)

    def pool(self, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"mode": self.mode}

    def sentence_transformers_config(self, dim: int) -> dict | None:
        """The ``1_Pooling/config.json`` that makes sentence-transformers pool the same way, or None."""
        return None

    @property
    def needs_prefix_states(self) -> bool:
        """Whether the pooled result depends on the hidden states of the prompt prefix."""
        return True

    def bind(self, tokenizer) -> None:
        """Resolve token strings to ids once the tokenizer is known."""

    @staticmethod
    def from_config(config: dict | str) -> Pooler:
        config = {"mode": config} if isinstance(config, str) else dict(config)
        mode = config.pop("mode")
        if mode not in Pooler.registry:
            raise ValueError(f"unknown pooling mode {mode!r}; choose one of {sorted(Pooler.registry)}.")
        return Pooler.registry[mode](**config)

    def save(self, folder: str | Path) -> None:
        """Write ``folder/mmembed_pooling.json`` (atomically)."""
        write_text(Path(folder) / CONFIG_NAME, json.dumps(self.get_config(), indent=2))

    @staticmethod
    def load(folder: str | Path) -> Pooler:
        """The pooler saved in ``folder``; a corrupt or invalid file raises ModelFolderError naming it."""
        path = Path(folder) / CONFIG_NAME
        try:
            return Pooler.from_config(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelFolderError(f"{path}: not a valid pooler config ({type(exc).__name__}: {exc}). Save the "
                                   f"model again.") from None

    @staticmethod
    def _st(dim: int, mode: str, include_prompt: bool = True) -> dict:
        return {"embedding_dimension": dim, "pooling_mode": mode, "include_prompt": include_prompt}


def last_positions(attention_mask: Tensor) -> Tensor:
    """Index of the last attended token of each row, for left or right padding."""
    seq = attention_mask.shape[1]
    return seq - 1 - attention_mask.flip(1).to(torch.int8).argmax(1)


def first_positions(attention_mask: Tensor) -> Tensor:
    """Index of the first attended token of each row, for left or right padding."""
    return attention_mask.to(torch.int8).argmax(1)


def _ones(hidden: Tensor) -> Tensor:
    return torch.ones(hidden.shape[0], dtype=torch.long, device=hidden.device)


class LastTokenPooler(Pooler):
    """State of the last attended token (LCO, VLM2Vec, E5-Mistral)."""

    mode = "last"

    @property
    def needs_prefix_states(self) -> bool:
        return False

    def pool(self, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_positions(batch["attention_mask"])], _ones(hidden)

    def sentence_transformers_config(self, dim: int) -> dict | None:
        return self._st(dim, "lasttoken")


class CLSPooler(Pooler):
    """State of the first attended token (BERT-style encoders)."""

    mode = "cls"

    def pool(self, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, first_positions(batch["attention_mask"])], _ones(hidden)

    def sentence_transformers_config(self, dim: int) -> dict | None:
        return self._st(dim, "cls")


class MeanPooler(Pooler):
    """Mean over attended tokens; with ``exclude_prefix`` the prompt prefix is left out (GRACE, GritLM)."""

    mode = "mean"

    def __init__(self, exclude_prefix: bool = False) -> None:
        super().__init__()
        self.exclude_prefix = exclude_prefix

    @property
    def needs_prefix_states(self) -> bool:
        return not self.exclude_prefix

    def get_config(self) -> dict:
        return {"mode": self.mode, "exclude_prefix": self.exclude_prefix}

    def token_mask(self, batch: dict[str, Tensor]) -> Tensor:
        mask = batch["attention_mask"].bool()
        if self.exclude_prefix and "prefix_lengths" in batch:
            rank = mask.long().cumsum(1)  # 1-based rank among attended tokens
            mask = mask & (rank > batch["prefix_lengths"][:, None])
        return mask

    def pool(self, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mask = self.token_mask(batch).unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(1)
        return summed / mask.sum(1).clamp(min=1.0), _ones(hidden)

    def sentence_transformers_config(self, dim: int) -> dict | None:
        return self._st(dim, "mean", include_prompt=not self.exclude_prefix)


class SpecialTokenPooler(Pooler):
    """States at every occurrence of a special token such as ``<|emb|>`` (MuCo): one embedding per occurrence."""

    mode = "special_token"

    def __init__(self, token: str = "<|emb|>") -> None:
        super().__init__()
        self.token = token
        self.token_id: int | None = None

    @property
    def needs_prefix_states(self) -> bool:
        return False

    def get_config(self) -> dict:
        return {"mode": self.mode, "token": self.token}

    def bind(self, tokenizer) -> None:
        token_id = tokenizer.convert_tokens_to_ids(self.token)
        if token_id is None or token_id == tokenizer.unk_token_id or self.token not in tokenizer.get_vocab():
            raise ValueError(f"special-token pooling: the tokenizer has no token {self.token!r}. Add it with "
                             f"tokenizer.add_special_tokens({{'additional_special_tokens': [{self.token!r}]}}) and "
                             f"resize the model's embeddings.")
        self.token_id = token_id

    def pool(self, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self.token_id is None:
            raise RuntimeError("SpecialTokenPooler.bind(tokenizer) must be called before pooling.")
        hits = (batch["input_ids"] == self.token_id) & batch["attention_mask"].bool()
        counts = hits.sum(1)
        if bool((counts == 0).any()):
            row = int((counts == 0).nonzero()[0])
            raise MissingTokenError(row, f"no {self.token!r} token to pool at: the prompt template must place it "
                                         f"(e.g. PromptTemplate(response={self.token!r})), or the input must hold it.")
        return hidden[hits], counts
