"""Wiring for MuCo (multi-turn contrastive learning, Kim et al., CVPR 2026): the embedding tokens, the adapter with
trainable token rows, the packing collator and the loss of each stage, the trainer.

- ``stage="pretrain"``: multi-turn rows (:func:`~mmembed.data.formats.read_multiturn`: one image, K pairs) packed by
  :class:`~mmembed.data.multiturn.MultiTurnCollator`, :class:`~mmembed.losses.MultiTurnContrastiveLoss`.
- ``stage="finetune"``: MMEB-train rows with generated captions (``read_mmeb_train``), two embeddings per
  conversation (:class:`~mmembed.data.multiturn.AuxiliaryCollator`), :class:`~mmembed.losses.AuxiliaryContrastiveLoss`.

Evaluation uses one ``<|emb|>`` turn per input (MuCo's ``TEMPLATE_BASE``): the embedder's template is the chat
template with the system message and the fixed reply ``<|emb|>``, pooled by the special-token pooler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...data.collator import content_key
from ...data.dataset import to_dataset
from ...data.multiturn import EMB_TOKEN, MASK_TOKEN, SYSTEM, AuxiliaryCollator, MultiTurnCollator
from ...defaults import base_model
from ...embedder import Embedder
from ...errors import ConfigError
from ...eval.mmeb import evaluate_mmeb
from ...inputs import PromptTemplate
from ...losses import AuxiliaryContrastiveLoss, MultiTurnContrastiveLoss
from ...pooling import Pooler
from ..arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from ..build import attach_lora
from ..checks import POSITIVE_INT, check_fields, one_of
from ..trainer import EmbeddingTrainer
from . import factory
from .base import Method, RecipeArgs

logger = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune")


@dataclass
class MuCoArguments:
    """MuCo's own options."""

    stage: str = field(default="pretrain", metadata={"help": "pretrain (multi-turn packs) or finetune (auxiliary "
                                                             "embedding with masked rewrites)"})
    max_turns: int | None = field(default=7, metadata={"help": "pairs packed per conversation (MuCo: 7)"})
    shuffle_turns: bool = field(default=True, metadata={
        "help": "shuffle the turn order of each pack (MuCo). Off for templated data with few question types: a "
                "per-pack order of types is a text signature both conversations share (data_cards/synthetic.md)"})
    train_token_rows: bool = field(default=True, metadata={"help": "train the embedding rows of <|emb|> and "
                                                                   "<|mask|> next to the adapter"})
    eval_mmeb_dir: str | None = field(default=None, metadata={"help": "MMEB-format folder scored before and after "
                                                                      "training (Precision@1)"})
    eval_image_root: str | None = field(default=None, metadata={"help": "image root of eval_mmeb_dir"})
    eval_max_queries: int | None = field(default=None, metadata={"help": "queries per MMEB task (seeded sample)"})

    def __post_init__(self) -> None:
        check_fields(self, {"stage": one_of(*STAGES), "max_turns": POSITIVE_INT, "eval_max_queries": POSITIVE_INT})


def prepare_embedder(embedder: Embedder, model_args: ModelArguments, args: MuCoArguments) -> list[int]:
    """Add ``<|emb|>`` / ``<|mask|>``, pool at ``<|emb|>``, attach the adapter (with the new rows trainable).
    Returns the ids of the embedding tokens."""
    from ...tokens import add_special_tokens

    ids = add_special_tokens(embedder, (EMB_TOKEN, MASK_TOKEN))
    embedder.pooler = Pooler.from_config({"mode": "special_token", "token": EMB_TOKEN})
    embedder.pooler.bind(embedder.backbone.tokenizer)
    if model_args.lora:
        attach_lora(embedder, model_args, trainable_token_indices=ids if args.train_token_rows else None)
    embedder.backbone.model.train()
    return ids


def multiturn_dataset(rows: list[dict]):
    """Multi-turn rows as a ``datasets.Dataset``; ``keys`` (the image) keep two packs of one image out of a batch."""
    from datasets import Dataset

    return Dataset.from_list([{**row, "keys": [content_key(None, row.get("image") or repr(row["pairs"]))]}
                              for row in rows])


def build_muco_embedder(model_args: ModelArguments, args: MuCoArguments) -> Embedder:
    """The Embedder of a MuCo run: the chat template with MuCo's system message and the ``<|emb|>`` reply, the new
    tokens added and pooled at, the adapter attached (:func:`prepare_embedder`)."""
    import mmembed

    template = PromptTemplate(text=model_args.template_text, image=model_args.template_image,
                              text_image=model_args.template_text_image, chat=True,
                              system=model_args.system_prompt or SYSTEM, response=EMB_TOKEN)
    # pooled at the last token until <|emb|> exists (prepare_embedder adds it and switches the pooler)
    embedder = mmembed.load(model_args.model_name_or_path or base_model(), template=template, pooling="last",
                            dtype=model_args.dtype, max_length=model_args.max_length, device="cpu")
    prepare_embedder(embedder, model_args, args)
    return embedder


def muco_trainer(embedder: Embedder, parts: list[list[dict]], model_args: ModelArguments, data_args: DataArguments,
                 training_args: ContrastiveTrainingArguments, args: MuCoArguments) -> EmbeddingTrainer:
    """The Trainer of a MuCo stage on the mixture ``parts`` (module docstring)."""
    system = model_args.system_prompt or SYSTEM
    info_nce = factory.info_nce(training_args)
    rows = [r for p in parts for r in p]
    seed = training_args.data_seed or training_args.seed
    if args.stage == "pretrain":
        loss = MultiTurnContrastiveLoss(embedder, info_nce, **factory.caching(training_args))
        collator = MultiTurnCollator(embedder.backbone, max_turns=args.max_turns, shuffle_turns=args.shuffle_turns,
                                     system=system, seed=seed)
        dataset = multiturn_dataset(rows)
    elif args.stage == "finetune":
        rng = np.random.default_rng(seed)  # MuCo samples one hard negative of each row's list
        rows = [{**r, "negative": [r["negative"][rng.integers(len(r["negative"]))]]} if r.get("negative") else r
                for r in rows]
        loss = AuxiliaryContrastiveLoss(embedder, info_nce, **factory.caching(training_args))
        collator = AuxiliaryCollator(embedder.backbone, system=system, seed=seed)
        dataset = to_dataset(rows)
    else:
        raise ConfigError(f"stage={args.stage!r}: choose pretrain or finetune.")
    return factory.embedding_trainer(loss, training_args, parts, collator, data_args.dataset_weights,
                                     dataset=dataset)


def build_muco_trainer(model_args: ModelArguments, data_args: DataArguments,
                       training_args: ContrastiveTrainingArguments, args: MuCoArguments) -> EmbeddingTrainer:
    """The Trainer of a MuCo stage in one call: the data first (a bad row stops the run before the model loads),
    then the embedder after seeding every generator from ``training_args.seed`` (the same LoRA init every run)."""
    from transformers import set_seed

    parts = factory.training_parts(data_args)
    set_seed(training_args.seed)
    embedder = build_muco_embedder(model_args, args)
    return muco_trainer(embedder, parts, model_args, data_args, training_args, args)


class MuCo(Method):
    """The ``muco`` recipe: a MuCo stage, scored on an MMEB-format folder (Precision@1) with ``eval_mmeb_dir``."""

    name = "muco"
    arguments: ClassVar[dict[str, type]] = {"model": ModelArguments, "data": DataArguments,
                                            "training": ContrastiveTrainingArguments, "muco": MuCoArguments}
    defaults: ClassVar[dict[str, Any]] = {"temperature": 0.02, "no_duplicates": False}
    after_suffix = "_after"

    def build_embedder(self, args: RecipeArgs) -> Embedder:
        from transformers import set_seed

        set_seed(args.training.seed)
        return build_muco_embedder(args.model, args.muco)

    def has_scores(self, args: RecipeArgs, data: Any) -> bool:
        return bool(args.muco.eval_mmeb_dir)

    def score(self, embedder: Embedder, args: RecipeArgs, data: Any, before: dict | None = None) -> dict:
        if not args.muco.eval_mmeb_dir:
            return {}
        muco = args.muco
        report = evaluate_mmeb(embedder, muco.eval_mmeb_dir, image_root=muco.eval_image_root,
                               max_queries=muco.eval_max_queries, show_progress_bar=False)
        scores = {"overall": round(report.summary["overall_present"], 2),
                  **{task: round(entry["score"], 2) for task, entry in report.tasks.items()}}
        if before is not None:
            logger.warning("MMEB-format Precision@1: %s -> %s", before.get("mmeb", {}).get("overall"),
                           scores["overall"])
        return {"mmeb": scores}

    def build(self, args: RecipeArgs, embedder: Embedder, data: list[list[dict]]) -> EmbeddingTrainer:
        return muco_trainer(embedder, data, args.model, args.data, args.training, args.muco)
