"""DefSent+ (Liu, arXiv 2405.16153): train the encoder to classify each dictionary definition to its entry, against
frozen entry embeddings built from the definitions themselves, in stages (``sentence_methods.md`` §8).

Progressive Separate Training, stage k = 1..``stages``:

1. entry embeddings ``E_e = mean_j pool(Enc_{k-1}(d_j))``: ``Enc_0`` is the initial model, ``Enc_{k-1}`` the model
   stage k-1 exported; optionally ICA-transformed (``ica``), then frozen;
2. a fresh adapter on the ORIGINAL initial model (same seed every stage) is trained with
   :class:`~mmembed.losses.defsent.EntryClassificationLoss` (a ``Trainer`` run);
3. the model is exported to ``<output_dir>/stage<k>/final`` (the last stage's to ``<output_dir>/final``) and, with
   ``eval_sts_file``, scored on STS-B (Spearman x 100; ``eval_before_training`` scores the initial model too).

``<output_dir>/stages.json`` records each stage (what built its targets, steps, seconds, score, and the embedding of a
probe sentence by the model the stage started from: the same for every stage, since each restarts from the initial
model); ``stage<k>/entry_embeddings.safetensors`` holds its target matrix and ``entries.json`` the entries. The result
dict (``{'method': 'defsent', ...}``) is what ``recipes/defsent.py`` prints last, as ``recipes/simcse.py`` does.

The data is WordNet's ``definitions.jsonl`` (``train_file``; ``train_format`` is not read): an entry is a lemma,
its definitions those of every synset listing it (:mod:`mmembed.data.definitions`); ``max_entries`` samples entries
(encoding every definition takes a while on a CPU), ``min_definitions`` filters them. Under ``accelerate launch``
every process builds the (identical) targets itself; scores and files are the main process's.

Of the shared training options, ``temperature``, ``mini_batch_size`` and ``mini_batch_tokens`` reach the loss;
``symmetric`` and ``learnable_temperature`` are refused (:func:`mmembed.train.methods.defsent.check_classification_options`)
and ``gather_across_devices`` has nothing to gather (every process scores against all entries).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from safetensors.torch import save_file
from transformers import set_seed

from ...data.definitions import Entry, definition_dataset, read_entries
from ...errors import ConfigError
from ...eval.sts import sts_benchmark_spearman
from ...files import atomic_path, write_text
from ...losses.defsent import SIMILARITIES, EntryClassificationLoss, entry_matrix
from ..arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from ..build import build_embedder
from ..checks import POSITIVE_INT, check_fields, one_of
from . import factory
from .base import Method, RecipeArgs

logger = logging.getLogger("defsent")

#: embedded by the model each stage starts from (recorded in stages.json: equal across stages)
PROBE = "a dictionary definition of a word"


@dataclass
class DefSentArguments:
    """DefSent+'s settings (defaults: the paper's, except ``similarity``; see :mod:`mmembed.losses.defsent`)."""

    stages: int = field(default=2, metadata={"help": "Progressive Separate Training stages (1 = plain DefSent+)"})
    max_entries: int | None = field(default=None, metadata={"help": "seeded sample of this many entries (all: "
                                                                       "null)"})
    min_definitions: int = field(default=1, metadata={"help": "keep entries with at least this many definitions"})
    ica: bool = field(default=False, metadata={"help": "ICA-transform the entry embeddings (x100) before freezing"})
    similarity: str = field(default="cosine", metadata={
        "help": "cosine (cos / temperature; the project's default) or dot (the paper's raw dot product)"})
    entry_batch_size: int = field(default=64, metadata={"help": "batch size when encoding the definitions"})

    def __post_init__(self) -> None:
        check_fields(self, {"stages": POSITIVE_INT, "max_entries": POSITIVE_INT, "min_definitions": POSITIVE_INT,
                            "similarity": one_of(*SIMILARITIES), "entry_batch_size": POSITIVE_INT})


def score(embedder, data_args: DataArguments) -> float:
    """STS-B Spearman x 100 of ``embedder`` on ``data_args.eval_sts_file``, rounded to 2 decimals."""
    return round(sts_benchmark_spearman(embedder, data_args.eval_sts_file), 2)


def prepare_entries(data_args: DataArguments, defsent_args: DefSentArguments,
                    training_args: ContrastiveTrainingArguments) -> list[Entry]:
    """The run's entries (refusing a missing ``train_file`` and ``resume_from_checkpoint``), recorded by the main
    process in ``<output_dir>/entries.json``."""
    if data_args.train_file is None:
        raise ConfigError("no definitions: set train_file (e.g. ../shared/data/wordnet/definitions.jsonl).")
    if training_args.resume_from_checkpoint:
        raise ConfigError("resume_from_checkpoint is not supported by the staged recipe (it would apply to every "
                         "stage); rerun the stages from the start.")
    entries = read_entries(data_args.train_file, max_entries=defsent_args.max_entries,
                           min_definitions=defsent_args.min_definitions, seed=training_args.seed)
    if training_args.process_index == 0:
        write_text(Path(training_args.output_dir) / "entries.json",
                   json.dumps([{"name": e.name, "definitions": len(e.definitions)} for e in entries]) + "\n")
    return entries


def train_stage(embedder, targets, dataset, data_args: DataArguments, defsent_args: DefSentArguments,
                training_args: ContrastiveTrainingArguments) -> tuple[dict, str]:
    """One stage's Trainer run (in ``training_args.output_dir``): ``embedder`` learns to classify each definition to
    its row of ``targets``; the model is exported to ``<output_dir>/final``."""
    embedder.train()
    loss = EntryClassificationLoss(embedder, targets, similarity=defsent_args.similarity,
                                   temperature=training_args.temperature, **factory.caching(training_args))
    trainer = factory.embedding_trainer(loss, training_args, [dataset], factory.contrastive_collator(embedder, data_args),
                                        dataset=dataset)
    summary, final = trainer.train_and_export()
    del trainer, loss
    gc.collect()
    return summary, final


def train_defsent(model_args: ModelArguments, data_args: DataArguments, defsent_args: DefSentArguments,
                  training_args: ContrastiveTrainingArguments, entries: list[Entry]) -> dict:
    """Run every stage on ``entries`` (module docstring) and return the result dict ``{'method': 'defsent', ...}``;
    ``training_args.output_dir`` is the run's folder again on return."""
    import mmembed

    dataset = definition_dataset(entries)
    root = Path(training_args.output_dir)
    main_process = training_args.process_index == 0
    logger.warning("defsent: %d entries, %d definitions, %d stages", len(entries), len(dataset), defsent_args.stages)
    result: dict = {"method": "defsent"}
    records: list[dict] = []
    encoder = None  # the model that builds the targets: the initial model at stage 1
    final = ""
    for stage in range(1, defsent_args.stages + 1):
        set_seed(training_args.seed)  # every stage: the initial model with the same fresh adapter
        embedder = build_embedder(model_args)
        record: dict = {"stage": stage, "targets_from": "initial model" if encoder is None else final,
                        "start_probe": embedder.encode(PROBE).tolist()}
        if stage == 1 and data_args.eval_sts_file and data_args.eval_before_training and main_process:
            result["sts_spearman_before"] = score(embedder, data_args)
            logger.warning("defsent: STS-B Spearman x100 of the initial model: %.2f", result["sts_spearman_before"])
        start = time.time()
        targets = entry_matrix(encoder if encoder is not None else embedder, entries, ica=defsent_args.ica,
                               batch_size=defsent_args.entry_batch_size)
        record["entry_seconds"] = round(time.time() - start, 1)
        del encoder
        gc.collect()
        stage_dir = root / f"stage{stage}"
        if main_process:
            with atomic_path(stage_dir / "entry_embeddings.safetensors") as tmp:
                save_file({"entry_embeddings": targets.contiguous()}, str(tmp))
        training_args.output_dir = str(stage_dir)
        summary, final = train_stage(embedder, targets, dataset, data_args, defsent_args, training_args)
        record.update(summary)
        del embedder
        gc.collect()
        if stage == defsent_args.stages and main_process:  # the result: <output_dir>/final
            shutil.rmtree(root / "final", ignore_errors=True)  # an unfinished one (a finished run was refused)
            os.replace(final, root / "final")
        if stage == defsent_args.stages:
            final = str(root / "final")
        record["final"] = final
        scored = bool(data_args.eval_sts_file) and main_process
        if stage < defsent_args.stages or scored:  # the exported model, LoRA merged: next targets, score
            encoder = mmembed.load(final, device=str(training_args.device))
        if scored:
            record["sts_spearman"] = score(encoder, data_args)
            logger.warning("defsent: STS-B Spearman x100 after stage %d: %.2f", stage, record["sts_spearman"])
        records.append(record)
        if main_process:
            write_text(root / "stages.json", json.dumps(records, indent=1) + "\n")
    del encoder
    training_args.output_dir = str(root)
    result.update({"train_seconds": round(sum(r["train_seconds"] for r in records), 1),
                   "steps": records[-1]["steps"], "stages": defsent_args.stages, "entries": len(entries),
                   "definitions": len(dataset),
                   "entry_seconds": round(sum(r["entry_seconds"] for r in records), 1)})
    if data_args.eval_sts_file and main_process:
        result["sts_spearman"] = records[-1]["sts_spearman"]
        result["sts_spearman_stages"] = [r["sts_spearman"] for r in records]
    return result


class DefSent(Method):
    """The ``defsent`` recipe."""

    name = "defsent"
    arguments: ClassVar[dict[str, type]] = {"model": ModelArguments, "data": DataArguments,
                                            "defsent": DefSentArguments, "training": ContrastiveTrainingArguments}

    def run(self, args: RecipeArgs) -> dict:
        """Refuse the contrastive options this loss has no use for, read the entries, train every stage."""
        check_classification_options(args.training)
        entries = prepare_entries(args.data, args.defsent, args.training)
        return train_defsent(args.model, args.data, args.defsent, args.training, entries)


def check_classification_options(args: ContrastiveTrainingArguments) -> None:
    """DefSent+ classifies each definition against every entry embedding, frozen: there are no in-batch
    candidates to take from other processes and no reverse (entry -> definition) direction, and its temperature is
    fixed. ``symmetric`` and ``learnable_temperature`` set on are refused in one line; ``gather_across_devices``
    (on by default for the contrastive methods) has nothing to gather and is not read."""
    wrong = [name for name in ("symmetric", "learnable_temperature") if getattr(args, name)]
    if wrong:
        raise ConfigError(f"defsent classifies definitions against frozen entry embeddings with a fixed temperature: "
                          f"{' and '.join(wrong)} {'have' if len(wrong) > 1 else 'has'} no meaning there; remove "
                          f"{'them' if len(wrong) > 1 else 'it'} (or set false).")
