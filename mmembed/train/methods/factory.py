"""The assembly the embedding methods share: the InfoNCE engine from the training options, the gradient-caching
options, the contrastive collator and the :class:`~mmembed.train.trainer.EmbeddingTrainer` over mixture parts."""

from __future__ import annotations

from typing import Any

from ...data.collator import ContrastiveCollator
from ...data.dataset import to_dataset
from ...data.formats import Rows
from ...data.readers import read_parts
from ...embedder import Embedder
from ...losses import InfoNCELoss
from ..arguments import ContrastiveTrainingArguments, DataArguments
from ..trainer import EmbeddingTrainer


def training_parts(data: DataArguments) -> list[list[dict]]:
    """The rows of ``train_file`` in ``train_format``, one list per file of a mixture
    (:func:`mmembed.data.readers.read_parts`)."""
    return read_parts(data.train_file, data.train_format, image_root=data.image_root,
                      skip_bad_records=data.skip_bad_records, max_rows=data.max_train_samples,
                      dataset_weights=data.dataset_weights)


def info_nce(args: ContrastiveTrainingArguments, **options: Any) -> InfoNCELoss:
    """The InfoNCE engine of the training options (temperature, learnable, symmetric, gathered), ``options``
    overriding or adding to them (e.g. ``hard_negative_weight``, ``view_transform``)."""
    return InfoNCELoss(**{"temperature": args.temperature, "learnable_temperature": args.learnable_temperature,
                          "symmetric": args.symmetric, "gather_across_devices": args.gather_across_devices,
                          **options})


def caching(args: ContrastiveTrainingArguments) -> dict[str, int | None]:
    """The gradient-caching options of a loss module (``mini_batch_size``, ``mini_batch_tokens``)."""
    return {"mini_batch_size": args.mini_batch_size, "mini_batch_tokens": args.mini_batch_tokens}


def contrastive_collator(embedder: Embedder, data: DataArguments) -> ContrastiveCollator:
    """Tokenizes anchor / positive / negative columns for ``embedder`` (anchors prompted with ``query_prompt``)."""
    return ContrastiveCollator(embedder.backbone, prompts={"anchor": data.query_prompt},
                               with_prefix_lengths=embedder.needs_prefix_lengths)


def embedding_trainer(loss: Any, args: ContrastiveTrainingArguments, parts: list[list[dict]], collator: Any,
                      dataset_weights: list[float] | None = None, dataset: Any = None) -> EmbeddingTrainer:
    """The trainer of ``loss`` on the mixture ``parts`` (a batch never mixes parts; ``dataset_weights`` samples them
    when there is one per part), or on ``dataset`` when given (its rows those of ``parts``)."""
    weights = dataset_weights if len(parts) == len(dataset_weights or []) else None
    return EmbeddingTrainer(model=loss, args=args,
                            train_dataset=dataset if dataset is not None else to_dataset(Rows.join(parts)),
                            data_collator=collator, dataset_sizes=[len(p) for p in parts], dataset_weights=weights)
