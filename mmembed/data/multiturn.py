"""MuCo's multi-turn packing: K (query, target) pairs about one image as one conversation, one forward pass.

:class:`MultiTurnCollator` turns rows of :func:`~mmembed.data.formats.read_multiturn` (one image, K pairs) into a
query conversation and a target conversation::

    system | user: <image> query_1 | assistant: <|emb|> | user: query_2 | assistant: <|emb|> | ...
    system | user: target_1       | assistant: <|emb|> | user: target_2 | assistant: <|emb|> | ...

The image is in the first user turn only (encoded once for the K pairs, seen by every later turn through causal
attention; no block mask), the turn order is shuffled with the same permutation on both sides, and rows may hold
different numbers of pairs (``turns`` records each). The special-token pooler then gives one embedding per
``<|emb|>``: turn k of conversation i is row ``sum(turns[:i]) + k`` on both sides. ``query_groups`` /
``positive_groups`` (a 64-bit id of the conversation, the same on every process) let the loss drop the other turns
of a conversation as negatives; ``*_keys`` (content hashes) drop identical texts of other conversations.

:class:`AuxiliaryCollator` is MuCo's fine-tuning layout (MMEB-train rows with generated captions): the query
conversation holds its ``<|emb|>`` turn, then a "rewrite" turn whose assistant text is a masked version of the
*positive*, then a second ``<|emb|>`` turn (the auxiliary embedding); symmetrically for the positive; hard negatives
are single-turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..inputs import Item, load_image
from .collator import NEGATIVE_OWNERS, content_key

EMB_TOKEN = "<|emb|>"
MASK_TOKEN = "<|mask|>"
SYSTEM = "You are a helpful assistant."
REWRITE = "Please rewrite your last response in human-readable language."
RECONSTRUCT = ("Generate a response that first reconstructs your very last response by inferring any masked "
               "information, then acknowledges or rephrases the complete what I asked you, and finally integrates "
               "the Answer information seamlessly.")


def _user(text: str, image: Any = None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def conversation(turns: list[tuple[str, str]], image: Any = None, system: str | None = SYSTEM) -> list[dict]:
    """Chat messages of ``(user text, assistant text)`` turns, the image in the first user turn only."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    for t, (user, reply) in enumerate(turns):
        messages += [_user(user, image if t == 0 else None), _assistant(reply)]
    return messages


def _tokenize(backbone: Any, conversations: list[list[dict]]) -> dict[str, Tensor]:
    """One tokenized batch of conversations (images per sample recorded for gradient caching's slicing)."""
    rendered = [backbone.renderer.render(Item(messages=c)) for c in conversations]
    batch = backbone.tokenize(rendered)
    batch["images_per_sample"] = torch.tensor([len(r.images) for r in rendered])
    return batch


@dataclass
class MultiTurnCollator:
    """Packs multi-turn rows for :class:`~mmembed.losses.multiturn.MultiTurnContrastiveLoss`.

    Args:
        backbone: the model's :class:`~mmembed.backbone.Backbone` (chat template, processor).
        max_turns: at most this many pairs a conversation (a random subset of a row's pairs; None: all).
        shuffle_turns: shuffle the turn order (the same permutation for queries and targets).
        system: the system message (MuCo: "You are a helpful assistant."; None: none).
        emb_token: the token whose states are the embeddings.
        seed: seeds turn sampling, shuffling and paraphrase choice (one stream per collator).
    """

    backbone: Any
    max_turns: int | None = None
    shuffle_turns: bool = True
    system: str | None = SYSTEM
    emb_token: str = EMB_TOKEN
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def pack(self, row: dict) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
        """The query and target conversations of one row, and its (query, target) texts in turn order."""
        pairs = list(row["pairs"])
        if not pairs:
            raise ValueError(f"a multi-turn row without pairs: {row}")
        order = self.rng.permutation(len(pairs)) if self.shuffle_turns else np.arange(len(pairs))
        if self.max_turns is not None:  # a random subset when shuffling, else the first pairs
            order = order[: self.max_turns]
        chosen = []
        for index in order:
            query = pairs[index]["query"]
            if isinstance(query, (list, tuple)):  # paraphrases: one per use
                query = query[self.rng.integers(len(query))]
            chosen.append((query, pairs[index]["positive"]))
        image = load_image(row["image"], "multi-turn image") if row.get("image") else None
        queries = conversation([(q, self.emb_token) for q, _ in chosen], image, self.system)
        targets = conversation([(t, self.emb_token) for _, t in chosen], None, self.system)
        return queries, targets, chosen

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        queries, targets, groups, query_keys, target_keys, turns = [], [], [], [], [], []
        for row in rows:
            q, t, chosen = self.pack(row)
            queries.append(q)
            targets.append(t)
            group = content_key(repr(row.get("pairs")), row.get("image"))
            groups += [group] * len(chosen)
            query_keys += [content_key(text, row.get("image")) for text, _ in chosen]
            target_keys += [content_key(text, None) for _, text in chosen]
            turns.append(len(chosen))
        groups_tensor = torch.tensor(groups)
        return {"anchor": _tokenize(self.backbone, queries), "positive": _tokenize(self.backbone, targets),
                "query_groups": groups_tensor, "positive_groups": groups_tensor.clone(),
                "query_keys": torch.tensor(query_keys), "positive_keys": torch.tensor(target_keys),
                "turns": torch.tensor(turns)}


def mask_words(text: str, rng: np.random.Generator, mask: str = MASK_TOKEN) -> str:
    """MuCo's masked rewrite target: with probability 0.5 only ``mask``; otherwise every word is replaced by
    ``mask`` with probability 0.5, and runs of masks collapse into one."""
    if rng.random() < 0.5:
        return mask
    words = [mask if rng.random() < 0.5 else w for w in text.split()]
    return re.sub(rf"(?:{re.escape(mask)}\s*)+", mask + " ", " ".join(words)).strip()


def described(side: dict) -> str:
    """A side as text for the other side's rewrite turn: its image as ``Image description: <caption>``."""
    parts = []
    if side.get("image") and side.get("caption"):
        parts.append(f"Image description: {side['caption']}")
    if side.get("text"):
        parts.append(side["text"])
    return "\n".join(parts)


@dataclass
class AuxiliaryCollator:
    """MuCo fine-tuning: two ``<|emb|>`` per query / positive conversation (base, then auxiliary after a masked
    rewrite of the other side), single-turn hard negatives, for
    :class:`~mmembed.losses.multiturn.AuxiliaryContrastiveLoss`."""

    backbone: Any
    system: str | None = SYSTEM
    emb_token: str = EMB_TOKEN
    mask_token: str = MASK_TOKEN
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _side(self, side: dict, other: dict) -> list[dict]:
        image = load_image(side["image"], "image") if side.get("image") else None
        rewrite = mask_words(described(other), self.rng, self.mask_token)
        return conversation([(side.get("text") or "", self.emb_token), (REWRITE, rewrite),
                             (RECONSTRUCT, self.emb_token)], image, self.system)

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        queries = [self._side(r["anchor"], r["positive"]) for r in rows]
        positives = [self._side(r["positive"], r["anchor"]) for r in rows]
        out: dict[str, Any] = {"anchor": _tokenize(self.backbone, queries),
                               "positive": _tokenize(self.backbone, positives),
                               "query_keys": torch.tensor([content_key(r["anchor"].get("text"), r["anchor"].get("image"))
                                                           for r in rows]),
                               "positive_keys": torch.tensor([content_key(r["positive"].get("text"),
                                                                          r["positive"].get("image")) for r in rows])}
        negatives = [n for r in rows for n in (r.get("negative") or [])]
        if negatives:
            counts = [len(r.get("negative") or []) for r in rows]
            if len(set(counts)) > 1:  # rows without (or with more) hard negatives: the loss needs each one's row
                out[NEGATIVE_OWNERS] = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts))
            out["negative"] = _tokenize(self.backbone, [
                conversation([(n.get("text") or "", self.emb_token)],
                             load_image(n["image"], "negative image") if n.get("image") else None, self.system)
                for n in negatives])
            out["negative_keys"] = torch.tensor([content_key(n.get("text"), n.get("image")) for n in negatives])
        return out
