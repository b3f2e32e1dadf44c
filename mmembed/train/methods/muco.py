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

import numpy as np

from ..data.collator import content_key
from ..data.dataset import to_dataset
from ..data.multiturn import EMB_TOKEN, MASK_TOKEN, SYSTEM, AuxiliaryCollator, MultiTurnCollator
from ..defaults import base_model
from ..embedder import Embedder
from ..errors import ConfigError
from ..inputs import PromptTemplate
from ..losses import AuxiliaryContrastiveLoss, InfoNCELoss, MultiTurnContrastiveLoss
from ..pooling import Pooler
from .arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from .build import attach_lora, load_datasets
from .checks import POSITIVE_INT, check_fields, one_of
from .trainer import EmbeddingTrainer

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
    from ..tokens import add_special_tokens

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


def build_muco_trainer(model_args: ModelArguments, data_args: DataArguments,
                       training_args: ContrastiveTrainingArguments, args: MuCoArguments) -> EmbeddingTrainer:
    """The Trainer of a MuCo stage (see the module docstring); the embedder is built after seeding every generator
    from ``training_args.seed`` (the same LoRA init in every run)."""
    from transformers import set_seed

    import mmembed

    parts = load_datasets(data_args)  # first: a bad row stops the run before the model loads
    set_seed(training_args.seed)
    system = model_args.system_prompt or SYSTEM
    template = PromptTemplate(text=model_args.template_text, image=model_args.template_image,
                              text_image=model_args.template_text_image, chat=True, system=system, response=EMB_TOKEN)
    # pooled at the last token until <|emb|> exists (prepare_embedder adds it and switches the pooler)
    embedder = mmembed.load(model_args.model_name_or_path or base_model(), template=template, pooling="last", dtype=model_args.dtype,
                            max_length=model_args.max_length, device="cpu")
    prepare_embedder(embedder, model_args, args)
    info_nce = InfoNCELoss(temperature=training_args.temperature, learnable_temperature=training_args.learnable_temperature,
                           symmetric=training_args.symmetric, gather_across_devices=training_args.gather_across_devices)
    rows = [r for p in parts for r in p]
    seed = training_args.data_seed or training_args.seed
    if args.stage == "pretrain":
        loss = MultiTurnContrastiveLoss(embedder, info_nce, mini_batch_size=training_args.mini_batch_size,
                                        mini_batch_tokens=training_args.mini_batch_tokens)
        collator = MultiTurnCollator(embedder.backbone, max_turns=args.max_turns, shuffle_turns=args.shuffle_turns,
                                     system=system, seed=seed)
        dataset = multiturn_dataset(rows)
    elif args.stage == "finetune":
        rng = np.random.default_rng(seed)  # MuCo samples one hard negative of each row's list
        rows = [{**r, "negative": [r["negative"][rng.integers(len(r["negative"]))]]} if r.get("negative") else r
                for r in rows]
        loss = AuxiliaryContrastiveLoss(embedder, info_nce, mini_batch_size=training_args.mini_batch_size,
                                        mini_batch_tokens=training_args.mini_batch_tokens)
        collator = AuxiliaryCollator(embedder.backbone, system=system, seed=seed)
        dataset = to_dataset(rows)
    else:
        raise ConfigError(f"stage={args.stage!r}: choose pretrain or finetune.")
    return EmbeddingTrainer(model=loss, args=training_args, train_dataset=dataset, data_collator=collator,
                            dataset_sizes=[len(p) for p in parts], dataset_weights=data_args.dataset_weights)
