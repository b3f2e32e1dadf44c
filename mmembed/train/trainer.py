"""``EmbeddingTrainer``: ``transformers.Trainer`` for a :class:`~mmembed.losses.ContrastiveLoss`.

It overrides only what it must: the loss call (to log the loss's parts), the train dataloader (a batch sampler with
no duplicate texts), and saving / loading checkpoints as mmembed folders (adapter plus the loss's own parameters).
The training loop, distribution (DDP, DeepSpeed), mixed precision, optimizer, scheduler and resuming are Trainer's.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerState
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import TrainOutput

from .. import lora
from ..data.samplers import DatasetMixtureBatchSampler, NoDuplicatesBatchSampler
from ..files import atomic_path
from .distributed import export_embedder
from .logs import use_short_logs
from .run import resolve_resume

logger = logging.getLogger(__name__)

LOSS_WEIGHTS = "loss.safetensors"
EMBEDDER_PREFIX = "model.backbone.model."


class EmbeddingTrainer(Trainer):
    """Trains a :class:`~mmembed.losses.ContrastiveLoss` (the Embedder inside it) with a contrastive collator."""

    def __init__(self, *args, dataset_sizes: list[int] | None = None, dataset_weights: list[float] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dataset_sizes = dataset_sizes
        self.dataset_weights = dataset_weights
        self._parts: dict[str, list[float]] = defaultdict(list)
        use_short_logs(self)
        module = self.accelerator.unwrap_model(self.model)
        trainable, total = lora.count_trainable(module)
        logger.warning("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}",
                       100 * trainable / max(total, 1))

    @property
    def embedder(self):
        return self.accelerator.unwrap_model(self.model).model

    def save_embedder(self, folder: str | Path) -> None:
        """Save the trained Embedder with its LoRA adapter merged (collecting ZeRO-3 shards first)."""
        export_embedder(self, self.embedder, folder)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        """``Trainer.train``, except that ``resume_from_checkpoint=True`` (or ``"true"``) takes the latest complete
        checkpoint of ``output_dir`` and raises :class:`~mmembed.errors.RunStateError` when there is none, and that
        resuming from a checkpoint that already reached ``max_steps`` loads it and stops: Trainer would run one more
        step past ``max_steps`` when the run does not end on an epoch boundary."""
        folder = resume_from_checkpoint = resolve_resume(self.args.output_dir, resume_from_checkpoint)
        if isinstance(folder, (str, os.PathLike)) and self.args.max_steps > 0:
            state_file = Path(folder) / TRAINER_STATE_NAME
            state = TrainerState.load_from_json(str(state_file)) if state_file.is_file() else None
            if state is not None and state.global_step >= self.args.max_steps:
                logger.warning("%s is at step %d, max_steps is %d: nothing left to train, loading it as the result",
                               folder, state.global_step, self.args.max_steps)
                self._load_from_checkpoint(str(folder))
                self.state = state
                losses = [h["loss"] for h in state.log_history if "loss" in h]
                return TrainOutput(state.global_step, losses[-1] if losses else 0.0, {})
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def train_and_export(self) -> tuple[dict, str]:
        """Train (resuming from ``args.resume_from_checkpoint`` when set), then save the Embedder merged to
        ``<output_dir>/final``. Returns ``({"train_seconds", "steps"}, final folder)`` for the recipe's summary."""
        start = time.time()
        self.train(resume_from_checkpoint=self.args.resume_from_checkpoint)
        final = f"{self.args.output_dir}/final"
        self.save_embedder(final)
        return {"train_seconds": round(time.time() - start, 1), "steps": self.state.global_step}, final

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        for key, value in outputs.items():
            if key != "loss":
                self._parts[key].append(float(value.detach()))
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss's parts (averaged since the last log) to the step's log; printed as one short line
        (:mod:`mmembed.train.logs`), kept whole in ``trainer_state.json``."""
        if "loss" in logs and self._parts:
            logs.update({k: round(sum(v) / len(v), 6) for k, v in self._parts.items()})
            self._parts.clear()
        super().log(logs, start_time)

    def get_train_dataloader(self) -> DataLoader:
        """Batches with no duplicate input, or, for a mixture of datasets, one dataset per batch (by weight)."""
        dataset = self.train_dataset
        seed = self.args.data_seed or self.args.seed
        batch_size = self.args.per_device_train_batch_size
        if self.dataset_sizes is not None and len(self.dataset_sizes) > 1:
            sampler = DatasetMixtureBatchSampler(self.dataset_sizes, batch_size, self.dataset_weights, seed=seed)
        elif getattr(self.args, "no_duplicates", False):
            if "keys" not in dataset.column_names:
                raise ValueError("no_duplicates needs a 'keys' column (see mmembed.data.dataset.to_dataset).")
            sampler = NoDuplicatesBatchSampler(dataset["keys"], batch_size, drop_last=True, seed=seed)
        else:
            self._batch_sampler = None
            return super().get_train_dataloader()
        self._batch_sampler = sampler
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        """Trainer's loader that skips the first ``num_batches`` of the resumed epoch, still passing ``set_epoch`` to
        our batch sampler: under several processes accelerate wraps it twice (skip, then shard) and neither wrapper
        forwards the epoch, so the resumed epoch would replay epoch 0's order."""
        loader = super().get_resumed_dataloader(dataloader, num_batches)
        sampler = getattr(self, "_batch_sampler", None)
        outer = getattr(loader, "batch_sampler", None)
        if sampler is not None and outer is not None and not hasattr(outer, "set_epoch"):
            outer.set_epoch = sampler.set_epoch
        return loader

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write an mmembed folder: adapter-only when the model has a LoRA adapter, plus the loss's parameters."""
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        module = self.accelerator.unwrap_model(self.model)
        state_dict = state_dict if state_dict is not None else module.state_dict()
        backbone_state = {k[len(EMBEDDER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(EMBEDDER_PREFIX)}
        adapter = lora.has_adapter(module.model.backbone.model)
        module.model.save(output_dir, adapter_only=adapter, state_dict=backbone_state or None)
        # the loss's own state (temperature, queues, momentum averages): everything outside the embedder
        loss_state = {k: v.detach().contiguous() for k, v in state_dict.items() if not k.startswith("model.")}
        if loss_state:
            with atomic_path(output_dir / LOSS_WEIGHTS) as tmp:
                save_file(loss_state, str(tmp))
        with atomic_path(output_dir / TRAINING_ARGS_NAME) as tmp:
            torch.save(self.args, str(tmp))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        module = self.accelerator.unwrap_model(model or self.model)
        folder = Path(resume_from_checkpoint)
        peft_model = module.model.backbone.model
        if lora.has_adapter(peft_model):
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(peft_model, load_file(str(folder / "adapter_model.safetensors")))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"{folder}: adapter weights do not match the model: {result.unexpected_keys[:3]}")
        else:
            peft_model.load_state_dict(load_file(str(folder / "model.safetensors")))
        if (folder / LOSS_WEIGHTS).is_file():
            module.load_state_dict(load_file(str(folder / LOSS_WEIGHTS)), strict=False)
