"""Wiring from recipe arguments to library objects: the Embedder (with LoRA), the data, the trainer."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import set_seed

from .. import lora
from ..data.collator import ContrastiveCollator
from ..data.dataset import to_dataset
from ..data.formats import READERS, Rows, read_sentences, read_sick_triplets
from ..defaults import base_model
from ..embedder import Embedder
from ..errors import ConfigError, DataError
from ..inputs import PromptTemplate
from ..losses import ContrastiveLoss, InfoNCELoss
from .arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from .trainer import EmbeddingTrainer

logger = logging.getLogger(__name__)


def pooling_config(name: str) -> str | dict:
    """A pooler config from a recipe's ``pooling`` string (``special_token:<|emb|>`` names the token)."""
    if name == "mean_excluding_prefix":
        return {"mode": "mean", "exclude_prefix": True}
    if name.startswith("special_token"):
        return {"mode": "special_token", "token": name.partition(":")[2] or "<|emb|>"}
    return name


def attach_lora(embedder: Embedder, args: ModelArguments, trainable_token_indices: list[int] | None = None) -> None:
    """Freeze the backbone and put a trainable LoRA (or DoRA) adapter on its language model's linear layers (and
    make the given embedding rows trainable)."""
    backbone = embedder.backbone
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    extra = {"use_dora": True} if args.use_dora else {}
    if trainable_token_indices:
        extra["trainable_token_indices"] = trainable_token_indices
    config = lora.lora_config(backbone.model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                              target_modules=args.lora_target_modules, **extra)
    backbone.model = lora.attach(backbone.model, config)


def build_embedder(args: ModelArguments, seed: int | None = None, **load_options) -> Embedder:
    """Load the backbone with the template and pooler of ``args`` (and ``load_options`` for ``mmembed.load``, e.g.
    ``rationale=``); attach a trainable LoRA adapter (a new one, or ``init_adapter`` to go on training). With
    ``seed``, every generator is seeded first, so that the LoRA init is the same in every process and run (recipes
    seed earlier, in :func:`mmembed.train.run.start_run`)."""
    import mmembed

    if seed is not None:
        set_seed(seed)
    template = PromptTemplate(text=args.template_text, image=args.template_image, text_image=args.template_text_image,
                              chat=args.chat, system=args.system_prompt, response=args.template_response)
    pooling = pooling_config(args.pooling)
    embedder = mmembed.load(args.model_name_or_path or base_model(), template=template, pooling=pooling,
                            dtype=args.dtype, max_length=args.max_length, device="cpu", **load_options)
    if args.init_adapter is not None:
        for p in embedder.backbone.model.parameters():
            p.requires_grad_(False)
        embedder.backbone.model = lora.load_adapter(embedder.backbone.model, args.init_adapter, is_trainable=True)
    elif args.lora:
        attach_lora(embedder, args)
    if args.compile_layers:
        logger.info("compiled %d layers", embedder.backbone.compile_layers())
    embedder.backbone.model.train()
    return embedder


def read_rows(path: str, args: DataArguments) -> list[dict]:
    if args.train_format == "sick":
        rows = read_sick_triplets(path)
    elif args.train_format == "sentences":
        rows = read_sentences(path)
    elif args.train_format in READERS:
        rows = READERS[args.train_format](path, args.image_root, args.skip_bad_records)
    else:
        raise ConfigError(f"train_format={args.train_format!r}; choose one of "
                         f"{sorted([*READERS, 'sick', 'sentences'])}.")
    return rows[: args.max_train_samples] if args.max_train_samples else rows


def load_datasets(args: DataArguments) -> list[list[dict]]:
    """The rows of each training file (``train_file`` may list several, comma-separated, or name a folder, whose
    ``*.jsonl`` files are taken in name order: a mixture; a SICK folder is one dataset)."""
    if args.train_file is None:
        raise ConfigError("no training data: set train_file (and train_format).")
    paths = []
    for entry in (p.strip() for p in args.train_file.split(",") if p.strip()):
        if Path(entry).is_dir() and args.train_format in READERS:
            files = sorted(str(f) for f in Path(entry).glob("*.jsonl"))
            if not files:
                raise DataError(f"train_file folder {entry} holds no *.jsonl files.")
            paths += files
        else:
            paths.append(entry)
    if args.dataset_weights is not None and len(args.dataset_weights) != len(paths):
        raise ConfigError(f"{len(args.dataset_weights)} dataset_weights for {len(paths)} train files.")
    return [read_rows(p, args) for p in paths]


def build_trainer(model_args: ModelArguments, data_args: DataArguments,
                  training_args: ContrastiveTrainingArguments, embedder: Embedder | None = None) -> EmbeddingTrainer:
    """The LCO-style trainer: InfoNCE with gradient caching over the rows of ``data_args`` (read first: a bad row
    stops the run before the model loads). Without ``embedder``, it is built from ``model_args`` with
    ``training_args.seed`` (one seed fixes the LoRA init and the data order)."""
    parts = load_datasets(data_args)
    embedder = embedder or build_embedder(model_args, seed=training_args.seed)
    loss = ContrastiveLoss(
        embedder,
        InfoNCELoss(temperature=training_args.temperature, learnable_temperature=training_args.learnable_temperature,
                    symmetric=training_args.symmetric, gather_across_devices=training_args.gather_across_devices),
        mini_batch_size=training_args.mini_batch_size, mini_batch_tokens=training_args.mini_batch_tokens)
    collator = ContrastiveCollator(embedder.backbone, prompts={"anchor": data_args.query_prompt},
                                   with_prefix_lengths=embedder.needs_prefix_lengths)
    return EmbeddingTrainer(model=loss, args=training_args, train_dataset=to_dataset(Rows.join(parts)),
                            data_collator=collator, dataset_sizes=[len(p) for p in parts],
                            dataset_weights=data_args.dataset_weights)
