"""Distilled Sentence Embedding (DSE): a bi-encoder student learns a teacher's pair scores (``recipes/distill.py``).

The student's cosine of each (anchor, positive) pair is pulled toward the teacher's score,
``loss = (1 - alpha) * task + alpha * mean((cos - teacher)^2)`` (``mmembed.losses.distill``; DSE: alpha 0.5).
The teacher is an embedding model (any ``mmembed.load`` path, a trained mmembed folder, or the offline names
all-mpnet-base-v2 / all-MiniLM-L6-v2), a sentence-transformers CrossEncoder folder (sigmoid scores), or a file of
precomputed scores (``--train_format teacher_scores``, or ``--teacher_scores_file`` without ``--teacher``).
Teacher scores are computed once, before training, and cached in ``teacher_scores_file`` (JSON lines,
``data_cards/teacher_scores.md``): a rerun, or a run interrupted while scoring, computes only what is missing.

Data (``--train_format``): ``stsb`` (an STS-B csv; gold score / 5 as the ``cosine`` task's target),
``sick_relatedness`` (SICK folder or ``SICK_train.txt``; (relatedness - 1) / 4), ``teacher_scores`` (a teacher-score
file: its pairs and scores), or the trainer's formats (``pairs``, ``triplets``, ``sick``: positive pairs for
``--task infonce``). Graded files mix: ``--train_file a.csv,sick --train_format stsb,sick_relatedness``.
``--task cosent`` ranks a batch's pairs by their gold scores (CoSENT) instead of regressing on them. At the end the
model is saved and, with ``eval_sts_file``, scored on STS-B (Spearman x 100); ``distill_eval_pairs`` training pairs
measure the student's MSE to the teacher before and after training.

- :func:`scored_rows`: the training rows (:func:`training_rows`) with their teacher scores (:func:`score_rows`);
- :func:`score_before` / :func:`score_final`: the student's MSE to the teacher and STS-B score before training and
  of the exported model;
- :func:`build_distill_trainer`: the :class:`~mmembed.losses.distill.DistillationLoss` (InfoNCE engine), the
  collator and the :class:`~mmembed.train.trainer.EmbeddingTrainer`.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...data import readers
from ...data import teacher_scores as ts
from ...embedder import Embedder
from ...errors import ConfigError, DataError
from ...eval.encoding import EmbeddingCache
from ...eval.sts import sts_benchmark_spearman
from ...losses.distill import ALPHA, TASKS, DistillationLoss
from .. import teachers
from ..arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from ..checks import FRACTION, POSITIVE_INT, check_fields, integer, one_of
from ..trainer import EmbeddingTrainer
from . import factory
from .base import Method, RecipeArgs

logger = logging.getLogger("distill")

#: the formats whose rows carry a gold ``score`` (:mod:`mmembed.data.readers`)
GRADED_FORMATS = ("stsb", "sick_relatedness")


@dataclass
class DistillArguments:
    """The teacher, its score cache and DSE's loss."""

    teacher: str | None = field(default=None, metadata={
        "help": "embedding model (mmembed.load path, all-mpnet-base-v2, all-MiniLM-L6-v2) or CrossEncoder folder; "
                "none: every pair's score must be in teacher_scores_file"})
    teacher_kind: str = field(default="auto", metadata={"help": f"one of {', '.join(teachers.TEACHER_KINDS)} (auto: a "
                                                                "ForSequenceClassification folder is a cross-encoder)"})
    teacher_name: str | None = field(default=None, metadata={
        "help": "the teacher's name in the cache (default '<kind>:<teacher>')"})
    teacher_scores_file: str | None = field(default=None, metadata={
        "help": "JSON-lines cache of teacher scores (default <output_dir>/teacher_scores.jsonl)"})
    teacher_batch_size: int = 64
    teacher_chunk_size: int = field(default=512, metadata={"help": "pairs scored between two appends to the cache"})
    alpha: float = field(default=ALPHA, metadata={"help": "weight of the distillation term (DSE: 0.5)"})
    task: str = field(default="infonce", metadata={"help": f"task loss: one of {', '.join(TASKS)}"})
    teacher_as_gold: bool = field(default=False, metadata={
        "help": "rows without a gold score take the teacher's score as their task target (cosine / cosent): graded "
                "training on unlabelled pairs mixed with graded files"})
    distill_eval_pairs: int = field(default=256, metadata={
        "help": "training pairs on which the student's MSE to the teacher is reported before / after (0: off)"})

    def __post_init__(self) -> None:
        check_fields(self, {"teacher_kind": one_of(*teachers.TEACHER_KINDS), "teacher_batch_size": POSITIVE_INT,
                            "teacher_chunk_size": POSITIVE_INT, "alpha": FRACTION, "task": one_of(*TASKS),
                            "distill_eval_pairs": integer(ge=0)})


def graded_rows(path: str, train_format: str) -> list[dict]:
    """STS-B or SICK-R pairs with the gold score mapped to [0, 1] (``score``): the ``stsb`` and
    ``sick_relatedness`` formats of :mod:`mmembed.data.readers`."""
    return readers.read_rows(path, train_format)


def training_rows(data: DataArguments, args: DistillArguments) -> list[dict]:
    """The rows to train on (``teacher_scores`` format: already carrying their ``teacher_score``)."""
    if data.train_file is not None and data.train_format == "teacher_scores":  # one teacher's records
        rows = readers.read_teacher_score_rows(data.train_file, args.teacher_name)
    else:  # files may be mixed, one format per comma-separated file (e.g. stsb,sick_relatedness)
        rows = [row for part in readers.read_parts(data.train_file, data.train_format, image_root=data.image_root,
                                                   skip_bad_records=data.skip_bad_records) for row in part]
    rows = rows[: data.max_train_samples] if data.max_train_samples else rows
    if not rows:
        raise DataError(f"{data.train_file}: no training rows.")
    if (args.task in ("cosine", "cosent") and args.alpha < 1 and not args.teacher_as_gold
            and any("score" not in r for r in rows)):
        raise ConfigError(f"task {args.task} needs a gold score per row: train_format {data.train_format!r} has none; use "
                         f"stsb or sick_relatedness, task infonce (positive pairs), or alpha 1.")
    return rows


def score_rows(rows: list[dict], args: DistillArguments, training_args: ContrastiveTrainingArguments
                   ) -> tuple[list[dict], dict]:
    """The rows with their teacher scores, from the cache, scoring the missing pairs with the teacher."""
    if all("teacher_score" in r for r in rows):
        return rows, {"teacher_scored": 0}
    if args.teacher is None and args.teacher_scores_file is None:
        raise ConfigError("no teacher scores: give a teacher (teacher=...) or a teacher_scores_file that covers the "
                         "training pairs.")
    path = args.teacher_scores_file or f"{training_args.output_dir}/teacher_scores.jsonl"
    name = args.teacher_name or (teachers.teacher_name(args.teacher, args.teacher_kind) if args.teacher else None)
    pairs = ts.pairs_of(rows)
    if name is None:  # a precomputed file, whoever made it
        found = ts.read_teacher_scores(path)
        missing = [p for p in pairs if p not in found]
        if missing:
            raise DataError(f"{path}: no teacher score for {len(missing)} of {len(pairs)} training pairs (first: "
                             f"{missing[0][0]!r} / {missing[0][1]!r}): give a teacher to compute them.")
        return ts.attach_teacher_scores(rows, [found[p] for p in pairs]), {"teacher_scored": 0}
    cache = ts.TeacherScoreCache(path, name)
    teacher = None
    if cache.missing(pairs) and args.teacher is not None:
        teacher = teachers.load_teacher(args.teacher, args.teacher_kind, name=name,
                                        batch_size=args.teacher_batch_size, device=str(training_args.device))
    scores = cache.score(pairs, teacher, chunk_size=args.teacher_chunk_size)
    del teacher
    gc.collect()
    return ts.attach_teacher_scores(rows, scores), {"teacher_scored": cache.computed, "teacher_scores_file": path}


def scored_rows(data_args: DataArguments, args: DistillArguments, training_args: ContrastiveTrainingArguments
                ) -> tuple[list[dict], dict]:
    """The training rows with their teacher scores (one process scores, the others read the cache) and the start of
    the run's result: ``task``, ``alpha``, ``rows``, ``teacher_scored`` (and ``teacher_scores_file``)."""
    rows = training_rows(data_args, args)
    with training_args.main_process_first(desc="teacher scores"):  # one process scores, the others read the cache
        rows, result = score_rows(rows, args, training_args)
    if args.teacher_as_gold:
        result["teacher_as_gold"] = sum("score" not in r for r in rows)
        rows = teacher_as_gold(rows)
    return rows, {"task": args.task, "alpha": args.alpha, "rows": len(rows), **result}


def teacher_as_gold(rows: list[dict]) -> list[dict]:
    """``rows`` where each row without a gold ``score`` takes its ``teacher_score`` as one; graded rows are kept."""
    return [row if "score" in row else {**row, "score": row["teacher_score"]} for row in rows]


def teacher_mse(embedder, rows: list[dict]) -> float:
    """Mean of (cos(student(anchor), student(positive)) - teacher score)^2 over ``rows``."""
    pairs = ts.pairs_of(rows)
    cache = EmbeddingCache(embedder, None, batch_size=64)
    cache.get([t for p in pairs for t in p])
    cosine = (cache.get([a for a, _ in pairs]) * cache.get([b for _, b in pairs])).sum(1)
    return float(np.mean((cosine - np.array([r["teacher_score"] for r in rows])) ** 2))


def _scores(embedder, probe: list[dict], sts_file: str | None, suffix: str) -> dict:
    result = {}
    if probe:
        result[f"teacher_mse{suffix}"] = round(teacher_mse(embedder, probe), 6)
    if sts_file:
        result[f"sts_spearman{suffix}"] = round(sts_benchmark_spearman(embedder, sts_file), 2)
    return result


def build_distill_trainer(embedder: Embedder, rows: list[dict], args: DistillArguments, data_args: DataArguments,
                          training_args: ContrastiveTrainingArguments) -> EmbeddingTrainer:
    """The trainer of ``embedder`` on the teacher-scored ``rows``: :class:`DistillationLoss` over an InfoNCE engine
    (the temperature learnable only for ``task infonce``), the anchors prompted with ``query_prompt``."""
    engine = factory.info_nce(training_args,
                              learnable_temperature=training_args.learnable_temperature and args.task == "infonce")
    loss = DistillationLoss(embedder, engine, alpha=args.alpha, task=args.task, **factory.caching(training_args))
    return factory.embedding_trainer(loss, training_args, [rows], factory.contrastive_collator(embedder, data_args))


class Distill(Method):
    """The ``distill`` recipe."""

    name = "distill"
    arguments: ClassVar[dict[str, type]] = {"model": ModelArguments, "data": DataArguments,
                                            "distill": DistillArguments, "training": ContrastiveTrainingArguments}

    def read_data(self, args: RecipeArgs) -> tuple[list[dict], dict]:
        """The teacher-scored rows and the start of the result (one process scores, the others read the cache);
        the student is built after, with the same LoRA init whether or not the teacher ran."""
        return scored_rows(args.data, args.distill, args.training)

    def start_result(self, args: RecipeArgs, data: tuple[list[dict], dict]) -> dict:
        return dict(data[1])

    def has_scores(self, args: RecipeArgs, data: Any) -> bool:
        return bool(data[0][: args.distill.distill_eval_pairs] or args.data.eval_sts_file)

    def score(self, embedder: Embedder, args: RecipeArgs, data: Any, before: dict | None = None) -> dict:
        probe = data[0][: args.distill.distill_eval_pairs]
        sts_file = args.data.eval_sts_file if before is not None or args.data.eval_before_training else None
        scores = _scores(embedder, probe, sts_file, "") if probe or sts_file else {}
        if before is not None and "sts_spearman" in scores:
            logger.warning("distill: STS-B Spearman x100 of the trained model: %.2f", scores["sts_spearman"])
        return scores

    def build(self, args: RecipeArgs, embedder: Embedder, data: Any) -> EmbeddingTrainer:
        return build_distill_trainer(embedder, data[0], args.distill, args.data, args.training)
