"""The contrastive collator: rows of ``{"anchor", "positive"[, "negative"]}`` -> one tokenized batch per column.

Each column is rendered with the model's template (and that column's prompt, e.g. a query instruction for the
anchor) and tokenized by the backbone; several positives or hard negatives per row are flattened row by row. Next to
the tokenizer / processor outputs a column batch carries ``keys`` (a 64-bit hash of each input's text and image, for
false-negative masks) and ``images_per_sample`` (for gradient caching's per-sample slicing).

Every row needs the same number of positives; hard negatives may differ from row to row (a row's ``negative`` is a
list, one input, empty or absent). When they differ, the batch carries ``negative_owners`` (the row of each hard
negative), which the loss passes on to :class:`~mmembed.losses.InfoNCELoss`: every hard negative is a candidate of
every query, so rows without one still train against the others' (and against all in-batch positives).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..inputs import Item, load_image

COLUMNS = ("anchor", "positive", "negative")
#: batch key of the query index of each hard negative, present when the rows of a batch have different numbers
NEGATIVE_OWNERS = "negative_owners"
#: per-row numbers a loss may need, passed through as tensors: row field -> batch key (dtype)
ROW_VALUES = {
    "bank_group": ("bank_groups", torch.long),  # CCP: the memory bank (language / source) of each row
    "teacher_score": ("teacher_scores", torch.float32),  # DSE: the teacher's score of the (anchor, positive) pair
    "score": ("scores", torch.float32),  # a gold pair score (e.g. STS), for distillation's task loss
    "entry": ("entry_ids", torch.long),  # DefSent+: the dictionary entry a definition belongs to
}


def content_key(text: str | None, image: str | None) -> int:
    """A stable 64-bit key of an input's content (identical text and image path -> identical key)."""
    digest = hashlib.blake2b(f"{text}\x00{image}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass
class ContrastiveCollator:
    """Tokenizes the columns of a batch of rows for ``backbone`` (a :class:`~mmembed.backbone.Backbone`)."""

    backbone: Any
    prompts: dict[str, str] = field(default_factory=dict)
    with_prefix_lengths: bool = False

    def _column(self, sides: list[dict], column: str) -> dict[str, Tensor]:
        items = []
        for side in sides:
            image = load_image(side["image"], f"{column} image") if side.get("image") else None
            items.append(Item(text=side.get("text"), image=image))
        prompt = self.prompts.get(column, "")
        backbone = self.backbone
        rendered = [backbone.renderer.render(item, prompt) for item in items]
        if any(r.images for r in rendered):
            batch = backbone.tokenize(rendered, with_prefix_lengths=self.with_prefix_lengths)
        else:  # tokenize once; over-long texts are shortened so the template's end survives (as in encode)
            ids = backbone.tokenize_texts([r.text for r in rendered])
            for i, row_ids in enumerate(ids):
                rendered[i], ids[i] = backbone.fit_to_length(items[i], prompt, rendered[i], row_ids,
                                                             f"{column} input")
            batch = backbone.pad(ids)
            if self.with_prefix_lengths:
                batch["prefix_lengths"] = torch.tensor([backbone.prefix_length(i, r.prefix)
                                                        for i, r in zip(ids, rendered)])
        batch["keys"] = torch.tensor([content_key(s.get("text"), s.get("image")) for s in sides])
        batch["images_per_sample"] = torch.tensor([len(r.images) for r in rendered])
        return batch

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column in ("anchor", "positive"):
            values = [row.get(column) for row in rows]
            if all(v is None for v in values):
                continue
            out[column] = self._column(_flatten(values, column), column)
        negatives = [_sides(row.get("negative")) for row in rows]
        counts = [len(n) for n in negatives]
        if any(counts):  # rows may have different numbers of hard negatives, none included
            out["negative"] = self._column([n for row in negatives for n in row], "negative")
            if len(set(counts)) > 1:
                out[NEGATIVE_OWNERS] = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts))
        for field_name, (key, dtype) in ROW_VALUES.items():
            if field_name in rows[0]:
                try:
                    out[key] = torch.tensor([row[field_name] for row in rows], dtype=dtype)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"every row of a batch needs a numeric '{field_name}' when one has it "
                                     f"({exc}).") from exc
        return out


def _sides(value: dict | list | None) -> list[dict]:
    """A row's inputs of one column as a list (a single input, a list of them, or none)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _flatten(values: list, column: str) -> list[dict]:
    """The anchors / positives of a batch, several per row flattened row by row (every row the same number)."""
    per_row = [_sides(v) for v in values]
    counts = sorted({len(v) for v in per_row})
    if len(counts) != 1 or counts[0] == 0:
        raise ValueError(f"rows of one batch have {counts} {column} inputs each; give every row the same number "
                         f"(at least one).")
    return [side for row in per_row for side in row]
