"""The Embedder a recipe trains: loaded with the template and pooler of its arguments, LoRA attached (or a saved
adapter loaded to go on training). The data: :mod:`mmembed.data.readers`; the trainers: :mod:`mmembed.train.methods`."""

from __future__ import annotations

import logging

from transformers import set_seed

from .. import lora
from ..defaults import base_model
from ..embedder import Embedder
from ..inputs import PromptTemplate
from .arguments import ModelArguments

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
                              target_modules=args.lora_target_modules, modules_to_save=args.lora_modules_to_save,
                              **extra)
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
                            dtype=args.dtype, max_length=args.max_length, device="cpu", quantize="none",
                            **load_options)  # training runs on float weights (a saved int8 choice is for inference)
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
