"""The SimCSE family on one trainer: each variant is a registered object saying which rows it trains on and which
loss module and engine options it uses (``recipes/simcse.py``, option ``method``).

| variant | rows | loss |
|---|---|---|
| ``unsup`` | each sentence its own positive (dropout views) | InfoNCE |
| ``sup`` | NLI triplets (entailment positive, contradiction hard negative) | InfoNCE + ``hard_negative_weight``; with ``false_negative_threshold``: MultiCSR's reference masking |
| ``esimcse`` | each sentence and its word-repeated copy | InfoNCE + momentum queue |
| ``debcse`` | positives / hard negatives drawn by IPW from the sentences | InfoNCE |
| ``whitened`` | each sentence with ``whitening_views`` dropout views as positives | InfoNCE on shuffled-group-whitened views |
| ``ccp`` | neighbouring sentences of a document (``documents`` format) | symmetric InfoNCE + per-group memory banks + one-sided BN |

The sentences of the unsupervised variants are those of the training file, whatever its format (anchors, positives
and negatives of triplets, SICK pairs, one sentence a line), so every variant can run on the same data.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...data.debcse import IPWConfig, select_pairs
from ...data.readers import read_documents
from ...data.rows import sentences_of, text_row
from ...data.views import DUP_RATE, context_pairs, repeat_words
from ...embedder import Embedder
from ...errors import ConfigError, DataError
from ...losses import ContrastiveLoss
from ...losses.ccp import MemoryBankContrastiveLoss, OneSidedBatchNorm
from ...losses.momentum import MOMENTUM, QUEUE_FACTOR, MomentumContrastiveLoss
from ...losses.reference import ReferenceMaskedLoss
from ...losses.whitening import ShuffledGroupWhitening
from ..arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from ..checks import COSINE, FRACTION, POSITIVE_INT, check_fields, one_of
from ..elastic import ElasticArguments, make_elastic
from ..trainer import EmbeddingTrainer
from . import factory
from .base import RecipeArgs
from .contrastive import STSScored

logger = logging.getLogger("simcse")


class Variant:
    """One SimCSE-family variant: its rows (from the rows of ``train_file``) and its loss. The defaults are plain
    SimCSE: InfoNCE on the rows as read."""

    name: ClassVar[str]
    #: whether MultiCSR's reference masking (``false_negative_threshold``) applies
    masks_false_negatives: ClassVar[bool] = True

    def read(self, method: MethodArguments, data: DataArguments) -> list[list[dict]]:
        """The rows of ``train_file`` (mixture parts), read before the model loads."""
        return factory.training_parts(data)

    def rows(self, parts: list[list[dict]], method: MethodArguments, embedder: Embedder,
             seed: int) -> list[list[dict]]:
        """The training rows (mixture parts) from the rows read (default: each sentence its own positive)."""
        return [[text_row(s, s) for s in sentences_of(parts)]]

    def engine(self, method: MethodArguments, args: ContrastiveTrainingArguments) -> dict[str, Any]:
        """Options of the InfoNCE engine beyond the training options."""
        return {}

    def loss(self, embedder: Embedder, info_nce: Any, method: MethodArguments, args: ContrastiveTrainingArguments,
             parts: list[list[dict]]) -> ContrastiveLoss:
        """The loss module (reference-masked with ``false_negative_threshold``)."""
        if method.false_negative_threshold is not None:
            return ReferenceMaskedLoss(embedder, info_nce, **factory.caching(args))
        return ContrastiveLoss(embedder, info_nce, **factory.caching(args))


VARIANTS: dict[str, Variant] = {}


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator: make ``cls`` the variant named ``cls.name``."""
    VARIANTS[cls.name] = cls()
    return cls


@register
class Unsup(Variant):
    name = "unsup"


@register
class Sup(Variant):
    name = "sup"

    def read(self, method: MethodArguments, data: DataArguments) -> list[list[dict]]:
        parts = factory.training_parts(data)
        if not all("negative" in row for rows in parts for row in rows):
            raise DataError("method sup needs triplets (anchor, positive, negative): e.g. train_format sick, or "
                            "triplets written by recipes/multicsr_data.py.")
        return parts

    def rows(self, parts, method, embedder, seed):
        return parts


@register
class ESimCSE(Variant):
    name = "esimcse"
    masks_false_negatives = False

    def rows(self, parts, method, embedder, seed):
        rng = random.Random(seed)
        return [[text_row(s, repeat_words(s, rng, method.dup_rate)) for s in sentences_of(parts)]]

    def loss(self, embedder, info_nce, method, args, parts):
        size = method.queue_size or int(QUEUE_FACTOR * args.per_device_train_batch_size * args.world_size)
        return MomentumContrastiveLoss(embedder, info_nce, queue_size=size, momentum=method.momentum,
                                       **factory.caching(args))


@register
class DebCSE(Variant):
    name = "debcse"

    def rows(self, parts, method, embedder, seed):
        """Triplets and pairs drawn by inverse propensity weighting, the model before training as the frozen
        reference encoder; a batch never mixes rows with and without a hard negative."""
        sentences = sentences_of(parts)
        vectors = np.asarray(embedder.encode(sentences, batch_size=64, show_progress_bar=True))
        triplets, pairs = select_pairs(sentences, vectors.reshape(len(sentences), -1),
                                       IPWConfig(k=method.ipw_k, positive_min=method.ipw_positive_min,
                                                 negative_max=method.ipw_negative_max, bins=method.ipw_bins,
                                                 seed=seed))
        logger.warning("debcse: %d triplets and %d pairs without a negative from %d sentences",
                       len(triplets), len(pairs), len(sentences))
        parts = [[text_row(r["anchor"]["text"], r["positive"]["text"], r["negative"]["text"]) for r in triplets],
                 [text_row(r["anchor"]["text"], r["positive"]["text"]) for r in pairs]]
        return [p for p in parts if p]


@register
class Whitened(Variant):
    name = "whitened"

    def rows(self, parts, method, embedder, seed):
        return [[text_row(s, [s] * method.whitening_views) for s in sentences_of(parts)]]

    def engine(self, method, args):
        return {"view_transform": ShuffledGroupWhitening(method.whitening_groups, seed=args.seed)}


@register
class CCP(Variant):
    name = "ccp"
    masks_false_negatives = False

    def read(self, method, data):
        if data.train_format != "documents":
            raise ConfigError("method ccp reads documents: set train_format=documents (JSON lines "
                              "{\"sentences\": [...], \"group\": ...}).")
        documents, groups, _ = read_documents(data.train_file)
        return [context_pairs(documents, method.ccp_window, groups)]

    def rows(self, parts, method, embedder, seed):
        return parts

    def engine(self, method, args):
        return {"symmetric": True, "view_transform": OneSidedBatchNorm()}

    def loss(self, embedder, info_nce, method, args, parts):
        groups = 1 + max(r["bank_group"] for r in parts[0])
        return MemoryBankContrastiveLoss(embedder, info_nce, num_groups=groups, bank_size=method.bank_size,
                                         **factory.caching(args))


@dataclass
class MethodArguments:
    """Which variant, and its settings (defaults: the papers' values, ``sentence_methods.md``)."""

    method: str = field(default="sup", metadata={"help": f"one of {', '.join(VARIANTS)}"})
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
        check_fields(self, {"method": one_of(*VARIANTS), "false_negative_threshold": COSINE, "dup_rate": FRACTION,
                            "queue_size": POSITIVE_INT, "momentum": FRACTION, "whitening_groups": POSITIVE_INT,
                            "whitening_views": POSITIVE_INT, "ipw_k": POSITIVE_INT, "ipw_positive_min": COSINE,
                            "ipw_negative_max": COSINE, "ipw_bins": POSITIVE_INT, "ccp_window": POSITIVE_INT,
                            "bank_size": POSITIVE_INT})

    @property
    def variant(self) -> Variant:
        return VARIANTS[self.method]


#: the variant names (``method`` values)
METHODS = tuple(VARIANTS)


def method_data(method: MethodArguments, data: DataArguments) -> list[list[dict]]:
    """The rows the variant reads from ``train_file`` (mixture parts; ccp: the context pairs of its documents),
    needing no model: read before the model is built, a bad row stops the run early."""
    return method.variant.read(method, data)


def method_rows(method: MethodArguments, data: DataArguments, embedder: Embedder, seed: int = 0,
                parts: list[list[dict]] | None = None) -> list[list[dict]]:
    """The training rows of the variant (mixture parts), from ``parts`` (:func:`method_data`; read when not given)."""
    parts = method_data(method, data) if parts is None else parts
    return method.variant.rows(parts, method, embedder, seed)


def method_loss(method: MethodArguments, embedder: Embedder, args: ContrastiveTrainingArguments,
                parts: list[list[dict]]) -> ContrastiveLoss:
    """The loss module of the variant for its training rows ``parts``."""
    variant = method.variant
    if method.false_negative_threshold is not None and not variant.masks_false_negatives:
        raise ConfigError(f"false_negative_threshold (MultiCSR's masking) works with methods "
                          f"{', '.join(n for n, v in VARIANTS.items() if v.masks_false_negatives)}, not "
                          f"{method.method}; drop it or change the method.")
    engine = factory.info_nce(args, hard_negative_weight=method.hard_negative_weight,
                              false_negative_threshold=method.false_negative_threshold, **variant.engine(method, args))
    return variant.loss(embedder, engine, method, args, parts)


def build_method_trainer(method: MethodArguments, data: DataArguments, args: ContrastiveTrainingArguments,
                         embedder: Embedder, elastic: ElasticArguments | None = None,
                         parts: list[list[dict]] | None = None) -> EmbeddingTrainer:
    """Rows, loss and trainer of the variant for ``embedder`` (already carrying its LoRA adapter), from ``parts``
    (:func:`method_data`, read before the model; read here when not given); with ``elastic``, the loss is also
    trained at the elastic (layers, dimensions) pairs."""
    parts = method_rows(method, data, embedder, seed=args.seed, parts=parts)
    loss = method_loss(method, embedder, args, parts)
    if elastic is not None:
        loss = make_elastic(loss, elastic, seed=args.seed)
    return factory.embedding_trainer(loss, args, parts, factory.contrastive_collator(embedder, data),
                                     data.dataset_weights)


class SimCSE(STSScored):
    """The ``simcse`` recipe: the variant of ``--method``, optionally elastic (``--elastic starbucks``)."""

    name = "simcse"
    arguments: ClassVar[dict[str, type]] = {
        "model": ModelArguments, "data": DataArguments, "method": MethodArguments,
        "elastic": ElasticArguments, "training": ContrastiveTrainingArguments}

    def read_data(self, args: RecipeArgs) -> list[list[dict]]:
        return method_data(args.method, args.data)

    def start_result(self, args: RecipeArgs, data: Any) -> dict:
        return {"method": args.method.method}

    def log_prefix(self, args: RecipeArgs) -> str:
        return f"{args.method.method}: "

    def build(self, args: RecipeArgs, embedder: Embedder, data: list[list[dict]]) -> EmbeddingTrainer:
        return build_method_trainer(args.method, args.data, args.training, embedder, args.elastic, data)
