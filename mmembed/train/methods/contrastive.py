"""LCO: language-centric contrastive refinement of an (M)LLM embedder (Xiao et al., NeurIPS 2025), and the plain
contrastive trainer under it: InfoNCE with gradient caching over (query, positive[, hard negatives]) rows, LoRA on
the language model only; the alignment learned on text carries over to images. With ``eval_sts_file`` the exported
model is scored on STS-B (Spearman x 100; ``eval_before_training`` scores the untrained model too)."""

from __future__ import annotations

import logging
from typing import Any

from ...embedder import Embedder
from ...eval.sts import sts_benchmark_spearman
from ...losses import ContrastiveLoss
from ..arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from ..build import build_embedder
from ..trainer import EmbeddingTrainer
from . import factory
from .base import Method, RecipeArgs

logger = logging.getLogger("lco")


class STSScored(Method):
    """A method scored on STS-B: the exported model with ``eval_sts_file``, the untrained model too with
    ``eval_before_training``."""

    def has_scores(self, args: RecipeArgs, data: Any) -> bool:
        return bool(args.data.eval_sts_file)

    def score(self, embedder: Embedder, args: RecipeArgs, data: Any, before: dict | None = None) -> dict:
        if not args.data.eval_sts_file or (before is None and not args.data.eval_before_training):
            return {}
        spearman = round(sts_benchmark_spearman(embedder, args.data.eval_sts_file), 2)
        if before is not None:
            logger.warning("%sSTS-B Spearman x100 of the trained model: %.2f", self.log_prefix(args), spearman)
        return {"sts_spearman": spearman}

    def log_prefix(self, args: RecipeArgs) -> str:
        return ""


class LCO(STSScored):
    """The ``lco`` recipe: :func:`contrastive_trainer` on the rows of ``train_file``."""

    name = "lco"

    def build(self, args: RecipeArgs, embedder: Embedder, data: list[list[dict]]) -> EmbeddingTrainer:
        return contrastive_trainer(embedder, data, args.data, args.training)


def contrastive_trainer(embedder: Embedder, parts: list[list[dict]], data_args: DataArguments,
                        training_args: ContrastiveTrainingArguments) -> EmbeddingTrainer:
    """InfoNCE (the engine of the training options) with gradient caching over the mixture ``parts``."""
    loss = ContrastiveLoss(embedder, factory.info_nce(training_args), **factory.caching(training_args))
    return factory.embedding_trainer(loss, training_args, parts, factory.contrastive_collator(embedder, data_args),
                                     data_args.dataset_weights)


def build_trainer(model_args: ModelArguments, data_args: DataArguments,
                  training_args: ContrastiveTrainingArguments, embedder: Embedder | None = None) -> EmbeddingTrainer:
    """The LCO trainer in one call: the rows of ``data_args`` (read first: a bad row stops the run before the model
    loads), then ``embedder`` (built from ``model_args`` with ``training_args.seed`` when not given)."""
    parts = factory.training_parts(data_args)
    embedder = embedder or build_embedder(model_args, seed=training_args.seed)
    return contrastive_trainer(embedder, parts, data_args, training_args)
