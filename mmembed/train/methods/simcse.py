"""The SimCSE family as presets of one trainer: which rows, which loss module, which engine options.

| method | rows | loss |
|---|---|---|
| ``unsup`` | each sentence its own positive (dropout views) | InfoNCE |
| ``sup`` | NLI triplets (entailment positive, contradiction hard negative) | InfoNCE + ``hard_negative_weight``; with ``false_negative_threshold``: MultiCSR's reference masking |
| ``esimcse`` | each sentence and its word-repeated copy | InfoNCE + momentum queue |
| ``debcse`` | positives / hard negatives drawn by IPW from the sentences | InfoNCE |
| ``whitened`` | each sentence with ``whitening_views`` dropout views as positives | InfoNCE on shuffled-group-whitened views |
| ``ccp`` | neighbouring sentences of a document (``documents`` format) | symmetric InfoNCE + per-group memory banks + one-sided BN |

The sentences of the unsupervised methods are those of the training file, whatever its format (anchors, positives
and negatives of triplets, SICK pairs, one sentence a line), so every method can run on the same data.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.collator import ContrastiveCollator
from ..data.dataset import to_dataset
from ..data.debcse import IPWConfig, select_pairs
from ..data.formats import Rows
from ..data.views import DUP_RATE, context_pairs, repeat_words
from ..embedder import Embedder
from ..errors import ConfigError, DataError
from ..losses import ContrastiveLoss, InfoNCELoss
from ..losses.ccp import MemoryBankContrastiveLoss, OneSidedBatchNorm
from ..losses.momentum import MOMENTUM, QUEUE_FACTOR, MomentumContrastiveLoss
from ..losses.reference import ReferenceMaskedLoss
from ..losses.whitening import ShuffledGroupWhitening
from .arguments import ContrastiveTrainingArguments, DataArguments
from .build import load_datasets
from .checks import COSINE, FRACTION, POSITIVE_INT, check_fields, one_of
from .elastic import ElasticArguments, make_elastic
from .trainer import EmbeddingTrainer

logger = logging.getLogger(__name__)

METHODS = ("unsup", "sup", "esimcse", "debcse", "whitened", "ccp")


@dataclass
class MethodArguments:
    """Which method, and its settings (defaults: the papers' values, ``sentence_methods.md``)."""

    method: str = field(default="sup", metadata={"help": f"one of {', '.join(METHODS)}"})
    hard_negative_weight: float = field(default=0.0, metadata={"help": "sup: log-weight of the own hard negative"})
    false_negative_threshold: float | None = field(default=None, metadata={
        "help": "mask candidates the frozen reference (the model before training) scores above this (MultiCSR: "
                "0.95)"})
    dup_rate: float = field(default=DUP_RATE, metadata={"help": "esimcse: word repetition rate"})
    queue_size: int | None = field(default=None, metadata={"help": "esimcse: queued negatives (default 2.5 x "
                                                                    "the global batch)"})
    momentum: float = field(default=MOMENTUM, metadata={"help": "esimcse: EMA decay of the momentum encoder"})
    whitening_groups: int = field(default=128, metadata={"help": "whitened: channel groups (must divide the width)"})
    whitening_views: int = field(default=2, metadata={"help": "whitened: positive views per sentence"})
    ipw_k: int = field(default=16, metadata={"help": "debcse: neighbours per sentence"})
    ipw_positive_min: float = field(default=0.75, metadata={"help": "debcse: min reference cosine of a positive"})
    ipw_negative_max: float = field(default=0.45, metadata={"help": "debcse: max reference cosine of a negative"})
    ipw_bins: int = field(default=5, metadata={"help": "debcse: surface-similarity bins"})
    ccp_window: int = field(default=1, metadata={"help": "ccp: neighbours within this many sentences"})
    bank_size: int = field(default=1024, metadata={"help": "ccp: memory-bank rows per group"})

    def __post_init__(self) -> None:
        check_fields(self, {"method": one_of(*METHODS), "false_negative_threshold": COSINE, "dup_rate": FRACTION,
                            "queue_size": POSITIVE_INT, "momentum": FRACTION, "whitening_groups": POSITIVE_INT,
                            "whitening_views": POSITIVE_INT, "ipw_k": POSITIVE_INT, "ipw_positive_min": COSINE,
                            "ipw_negative_max": COSINE, "ipw_bins": POSITIVE_INT, "ccp_window": POSITIVE_INT,
                            "bank_size": POSITIVE_INT})


def sentences_of(parts: list[list[dict]]) -> list[str]:
    """Every distinct text of the rows (anchors, positives, negatives), in first-seen order."""
    seen: dict[str, None] = {}
    for rows in parts:
        for row in rows:
            for column in ("anchor", "positive", "negative"):
                sides = row.get(column) or []
                for side in sides if isinstance(sides, list) else [sides]:
                    if side.get("text"):
                        seen.setdefault(side["text"], None)
    return list(seen)


def _text_row(anchor: str, positives: list[str] | str, negative: str | None = None) -> dict:
    def side(text: str) -> dict:
        return {"text": text, "image": None}

    row = {"anchor": side(anchor),
           "positive": [side(p) for p in positives] if isinstance(positives, list) else side(positives)}
    if negative is not None:
        row["negative"] = [side(negative)]
    return row


def read_documents(path: str | Path) -> tuple[list[list[str]], list[int], list[str]]:
    """CCP documents: JSON lines ``{"sentences": [...], "group": "en"}`` -> (documents, group ids, group names)."""
    documents, groups, names = [], [], {}
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sentences = [str(s) for s in record["sentences"]]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{number}: a document line is {{\"sentences\": [...], \"group\": ...}} "
                                f"({exc}).") from exc
            documents.append(sentences)
            groups.append(names.setdefault(str(record.get("group", "")), len(names)))
    return documents, groups, list(names)


def method_data(method: MethodArguments, data: DataArguments) -> list[list[dict]]:
    """The rows the method reads from ``train_file`` (a list of mixture parts; ccp: the context pairs of its
    documents), needing no model: read before the model is built, a bad row stops the run early."""
    if method.method == "ccp":
        if data.train_format != "documents":
            raise ConfigError("method ccp reads documents: set train_format=documents (JSON lines "
                             "{\"sentences\": [...], \"group\": ...}).")
        documents, groups, _ = read_documents(data.train_file)
        return [context_pairs(documents, method.ccp_window, groups)]
    parts = load_datasets(data)
    if method.method == "sup" and not all("negative" in row for rows in parts for row in rows):
        raise DataError("method sup needs triplets (anchor, positive, negative): e.g. train_format sick, or "
                        "triplets written by recipes/multicsr_data.py.")
    return parts


def method_rows(method: MethodArguments, data: DataArguments, embedder: Embedder, seed: int = 0,
                parts: list[list[dict]] | None = None) -> list[list[dict]]:
    """The training rows of the method (a list of mixture parts), from ``parts`` (:func:`method_data`; read here
    when not given)."""
    parts = method_data(method, data) if parts is None else parts
    if method.method in ("ccp", "sup"):
        return parts
    sentences = sentences_of(parts)
    if method.method == "unsup":
        return [[_text_row(s, s) for s in sentences]]
    if method.method == "whitened":
        return [[_text_row(s, [s] * method.whitening_views) for s in sentences]]
    if method.method == "esimcse":
        rng = random.Random(seed)
        return [[_text_row(s, repeat_words(s, rng, method.dup_rate)) for s in sentences]]
    # debcse: the model before training is the frozen reference encoder
    vectors = np.asarray(embedder.encode(sentences, batch_size=64, show_progress_bar=True))
    triplets, pairs = select_pairs(sentences, vectors.reshape(len(sentences), -1),
                                   IPWConfig(k=method.ipw_k, positive_min=method.ipw_positive_min,
                                             negative_max=method.ipw_negative_max, bins=method.ipw_bins, seed=seed))
    logger.warning("debcse: %d triplets and %d pairs without a negative from %d sentences",
                   len(triplets), len(pairs), len(sentences))
    parts = [[_text_row(r["anchor"]["text"], r["positive"]["text"], r["negative"]["text"]) for r in triplets],
             [_text_row(r["anchor"]["text"], r["positive"]["text"]) for r in pairs]]
    return [p for p in parts if p]  # a batch never mixes rows with and without a hard negative


def method_loss(method: MethodArguments, embedder: Embedder, args: ContrastiveTrainingArguments,
                num_bank_groups: int = 1) -> ContrastiveLoss:
    """The loss module of the method (``num_bank_groups``: ccp's memory banks)."""
    engine = {"temperature": args.temperature, "learnable_temperature": args.learnable_temperature,
              "symmetric": args.symmetric or method.method == "ccp",
              "gather_across_devices": args.gather_across_devices,
              "hard_negative_weight": method.hard_negative_weight,
              "false_negative_threshold": method.false_negative_threshold}
    if method.method == "whitened":
        engine["view_transform"] = ShuffledGroupWhitening(method.whitening_groups, seed=args.seed)
    if method.method == "ccp":
        engine["view_transform"] = OneSidedBatchNorm()
    if method.false_negative_threshold is not None and method.method in ("esimcse", "ccp"):
        raise ConfigError(f"false_negative_threshold (MultiCSR's masking) works with methods unsup, sup, debcse and "
                         f"whitened, not {method.method}; drop it or change the method.")
    info_nce = InfoNCELoss(**engine)
    caching = {"mini_batch_size": args.mini_batch_size, "mini_batch_tokens": args.mini_batch_tokens}
    if method.method == "esimcse":
        size = method.queue_size or int(QUEUE_FACTOR * args.per_device_train_batch_size * args.world_size)
        return MomentumContrastiveLoss(embedder, info_nce, queue_size=size, momentum=method.momentum, **caching)
    if method.method == "ccp":
        return MemoryBankContrastiveLoss(embedder, info_nce, num_groups=num_bank_groups, bank_size=method.bank_size,
                                         **caching)
    if method.false_negative_threshold is not None:
        return ReferenceMaskedLoss(embedder, info_nce, **caching)
    return ContrastiveLoss(embedder, info_nce, **caching)


def build_method_trainer(method: MethodArguments, data: DataArguments, args: ContrastiveTrainingArguments,
                         embedder: Embedder, elastic: ElasticArguments | None = None,
                         parts: list[list[dict]] | None = None) -> EmbeddingTrainer:
    """Rows, loss and trainer of the method for ``embedder`` (already carrying its LoRA adapter), from ``parts``
    (:func:`method_data`, read before the model; read here when not given); with ``elastic``, the loss is also
    trained at the elastic (layers, dimensions) pairs."""
    parts = method_rows(method, data, embedder, seed=args.seed, parts=parts)
    groups = 1 + max(r["bank_group"] for r in parts[0]) if method.method == "ccp" else 1
    loss = method_loss(method, embedder, args, num_bank_groups=groups)
    if elastic is not None:
        loss = make_elastic(loss, elastic, seed=args.seed)
    collator = ContrastiveCollator(embedder.backbone, prompts={"anchor": data.query_prompt},
                                   with_prefix_lengths=embedder.needs_prefix_lengths)
    return EmbeddingTrainer(model=loss, args=args, train_dataset=to_dataset(Rows.join(parts)),
                            data_collator=collator, dataset_sizes=[len(p) for p in parts],
                            dataset_weights=data.dataset_weights if len(parts) == len(data.dataset_weights or [])
                            else None)
