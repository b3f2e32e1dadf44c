"""GRACE on TRL: the policy writes rationales, :class:`~mmembed.rewards.GraceReward` scores their embeddings, and
``GRPOTrainer`` (LoRA, no KL, no reward-std scaling, clip 0.2: GRACE's settings, the recipe's defaults; the bundled
Quickstart config adds KL 0.04 and the reward terms that keep rationales, :mod:`mmembed.rewards.grace`) updates the
policy.

The policy *is* the embedder's backbone model (LoRA attached in place), so the reward embeds with the current
weights and the saved folder is an Embedder in rationale mode. Optionally, a differentiable InfoNCE term on the
rationale embeddings is added to the GRPO loss (``infonce_weight``; off by default).

GRACE (generative representation learning via contrastive policy optimisation, ICLR 2026; ``recipes/grace.py``):
the LLM writes a rationale (within <think></think>) for each text; the mean of its last hidden states over text +
rationale (system prompt left out) is the embedding; contrastive similarities of those embeddings are the GRPO
rewards (8 rollouts per prompt, no KL, no reward-std scaling, clip 0.2, LoRA). The negative and cross-group terms
are computed on each rollout's own embedding, so GRPO's group-mean subtraction does not cancel them (it does in the
public code). :func:`train_grace` saves the model as an Embedder in rationale mode (``<output_dir>/final``:
``mmembed.load`` encodes with a greedy rationale) and the reward curve as ``<output_dir>/reward_curve.png``;
:func:`held_apart_scores` scores the untrained and the trained model on ``eval_retrieval_dir`` (a BEIR folder: MRR@10
and accuracy@1) and ``eval_sts_file`` (STS-B Spearman) when given.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from ...data.readers import read_rows
from ...data.rows import grace_row
from ...embedder import Embedder
from ...errors import ConfigError, DataError
from ...eval.retrieval import evaluate_retrieval, read_beir
from ...eval.sts import read_sts_benchmark, spearman_of_pairs
from ...inputs import to_items
from ...rationale import GRACE_SYSTEM_PROMPT, RationaleConfig, restatement_stats
from ...rewards import GraceReward, GraceRewardConfig
from ..arguments import TRAINER_RULES, ModelArguments
from ..build import build_embedder
from ..checks import NON_NEGATIVE, POSITIVE, POSITIVE_INT, check_fields, integer, one_of
from ..distributed import export_embedder, pin_memory_field
from ..logs import use_short_logs
from ..plots import save_curve
from .base import Method, RecipeArgs

logger = logging.getLogger(__name__)

#: GRPOConfig values that make TRL's GRPO the GRACE objective (the recipe's parser defaults); activation
#: checkpointing stays off without naming the deprecated ``gradient_checkpointing`` (TRL's default True warns)
GRPO_DEFAULTS = {"num_generations": 8, "beta": 0.0, "scale_rewards": "none", "epsilon": 0.2, "num_iterations": 1,
                 "gradient_checkpointing": None, "remove_unused_columns": False, "temperature": 1.0}
#: ``train_format`` values of the GRACE recipe
GRACE_FORMATS = ("grace", "sentences", "sick")


@dataclass
class GraceArguments:
    """Data, reward and evaluation options of the GRACE recipe (the policy's are ``GRPOConfig``'s)."""

    train_file: str | None = field(default=None, metadata={
        "help": "supervised JSON lines (query / positive / negative), a sentence file, or a SICK folder"})
    train_format: str = field(default="grace", metadata={"help": "grace (supervised), sentences (unsupervised), "
                                                                 "sick (supervised triplets from SICK)"})
    max_train_samples: int | None = None
    skip_bad_records: bool = field(default=False, metadata={"help": "count and report bad records, don't stop"})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "rows whose rendered prompt is longer are "
                                                                   "dropped (counted in the log), as GRACE"})
    reward_temperature: float = field(default=0.1, metadata={"help": "tau of the reward"})
    negative_weight: float = 1.0
    clustering_weight: float = 0.2
    cross_group_weight: float = 0.2
    truncation_reward: float = field(default=-1.0, metadata={"help": "reward of a rationale cut off at the limit"})
    truncation_penalty: float | None = field(default=None, metadata={
        "help": "set: a rationale cut off at the limit keeps its own reward minus this (a soft limit instead of "
                "truncation_reward)"})
    restatement_weight: float = field(default=0.0, metadata={
        "help": "reward -= this x ROUGE-L(rationale, input): restating the input costs reward"})
    min_rationale_tokens: int = field(default=0, metadata={
        "help": "> 0: a rationale of fewer tokens loses short_weight x its shortfall / this (0: off)"})
    short_weight: float = 1.0
    query_rationale: bool = field(default=True, metadata={"help": "embed query and negative with a greedy "
                                                                  "rationale of the current policy"})
    reward_batch_size: int = 16
    infonce_weight: float = field(default=0.0, metadata={"help": "weight of a differentiable InfoNCE term on the "
                                                                 "rationale embeddings (0: off)"})
    infonce_temperature: float = 0.05
    rationale_max_tokens: int | None = field(default=None, metadata={
        "help": "rationale length of the saved model's encode (default: max_completion_length)"})
    eval_sts_file: str | None = field(default=None, metadata={"help": "STS-B file scored before and after"})
    eval_max_pairs: int | None = field(default=None, metadata={"help": "score only the first N STS pairs"})
    eval_retrieval_dir: str | None = field(default=None, metadata={
        "help": "BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) scored before and after"})

    def __post_init__(self) -> None:
        check_fields(self, {"train_format": one_of(*GRACE_FORMATS), "max_train_samples": POSITIVE_INT,
                            "max_prompt_tokens": POSITIVE_INT, "reward_temperature": POSITIVE,
                            "negative_weight": NON_NEGATIVE, "clustering_weight": NON_NEGATIVE,
                            "cross_group_weight": NON_NEGATIVE, "reward_batch_size": POSITIVE_INT,
                            "truncation_penalty": NON_NEGATIVE, "restatement_weight": NON_NEGATIVE,
                            "min_rationale_tokens": integer(ge=0), "short_weight": NON_NEGATIVE,
                            "infonce_weight": NON_NEGATIVE, "infonce_temperature": POSITIVE,
                            "rationale_max_tokens": POSITIVE_INT, "eval_max_pairs": POSITIVE_INT})


@dataclass
class GraceConfig(GRPOConfig):
    """``GRPOConfig`` with its values checked at parse time (the trainer's, the sampling ``temperature`` > 0, the
    rollouts per prompt >= 2, the rationale length >= 1); pinned memory only where torch sees an accelerator."""

    dataloader_pin_memory: bool = pin_memory_field()

    def __post_init__(self) -> None:
        check_fields(self, {**TRAINER_RULES, "temperature": POSITIVE, "num_generations": integer(ge=2),
                            "max_completion_length": POSITIVE_INT}, names=())
        super().__post_init__()


def grace_rows(args: GraceArguments) -> list[dict]:
    """``{"text", "query", "negative"?}`` rows: the policy text is the positive (supervised) or the sentence itself,
    whose query is a second rollout of the same text (unsupervised)."""
    if args.train_file is None:
        raise ConfigError("no training data: set train_file (and train_format).")
    if args.train_format not in GRACE_FORMATS:
        raise ConfigError(f"train_format={args.train_format!r}; choose grace, sick or sentences.")
    rows = read_rows(args.train_file, args.train_format, skip_bad_records=args.skip_bad_records,
                     max_rows=args.max_train_samples)
    if args.train_format == "sick":  # (sentence, entailed, contradicting): the policy writes for the entailed one
        return [grace_row(r["positive"]["text"], r["anchor"]["text"], r["negative"][0]["text"]) for r in rows]
    if args.train_format == "sentences":
        return [grace_row(r["anchor"]["text"], r["anchor"]["text"]) for r in rows]
    return rows


def grace_dataset(embedder: Embedder, rows: list[dict], max_prompt_tokens: int) -> Dataset:
    """TRL rows: the chat ``prompt`` (system prompt + policy text), ``text``, ``group`` (row index), ``query`` and
    ``negative`` when present. Rows whose rendered prompt exceeds ``max_prompt_tokens`` are dropped and counted."""
    system = embedder.template.system
    backbone = embedder.backbone
    lengths = [len(ids) for ids in backbone.tokenize_texts(
        [backbone.renderer.render(item).text for item in _text_items([r["text"] for r in rows])])]
    kept = [r for r, n in zip(rows, lengths) if n <= max_prompt_tokens]
    if len(kept) < len(rows):
        logger.warning("prompt-length filter: dropped %d of %d rows longer than %d tokens", len(rows) - len(kept),
                       len(rows), max_prompt_tokens)
    if not kept:
        raise DataError(f"no training rows left after the prompt-length filter (max_prompt_tokens="
                         f"{max_prompt_tokens}).")
    columns: dict[str, list] = {
        "prompt": [([{"role": "system", "content": system}] if system is not None else [])
                   + [{"role": "user", "content": r["text"]}] for r in kept],
        "text": [r["text"] for r in kept], "group": list(range(len(kept))), "query": [r["query"] for r in kept]}
    with_negative = sum("negative" in r for r in kept)
    if 0 < with_negative < len(kept):
        raise DataError(f"{with_negative} of {len(kept)} rows have a negative: give every row one (supervised) or "
                         f"none (the negative term is then left out).")
    if with_negative:
        columns["negative"] = [r["negative"] for r in kept]
    return Dataset.from_dict(columns)


def _text_items(texts: list[str]):
    return to_items([{"text": t} for t in texts])[0]


class GraceTrainer(GRPOTrainer):
    """``GRPOTrainer`` for GRACE: it keeps the reward's handle on the trainer, logs each step's seconds split into
    rollout generation, reward and update (``timing/*_s``; also in ``step_times``), and optionally adds a
    differentiable InfoNCE term (each rollout's rationale embedding against the prompts of the batch). Its logs print
    as one short line a step (:mod:`mmembed.train.logs`), and it writes no TRL model card."""

    def __init__(self, *args, grace_reward: GraceReward, infonce_weight: float = 0.0,
                 infonce_temperature: float = 0.05, **kwargs) -> None:
        super().__init__(*args, reward_funcs=[grace_reward], **kwargs)
        self.grace_reward = grace_reward
        grace_reward.trainer = self
        self.infonce_weight = infonce_weight
        self.infonce_temperature = infonce_temperature
        self._generation_seconds = 0.0
        self.step_times: list[dict[str, float]] = []
        use_short_logs(self)

    def create_model_card(self, *args, **kwargs) -> None:
        """No TRL card ("a fine-tuned version of None") at each checkpoint: the recipe writes mmembed's own
        (:mod:`mmembed.train.card`) when the run ends."""

    def _generate(self, prompts):
        start = time.perf_counter()
        try:
            return super()._generate(prompts)
        finally:
            self._generation_seconds += time.perf_counter() - start

    def training_step(self, *args, **kwargs):
        start, generation, reward = time.perf_counter(), self._generation_seconds, self.grace_reward.seconds
        with warnings.catch_warnings():
            # TRL reads transformers' deprecated `is_gradient_checkpointing` around generation
            # (trl/models/utils.py disable_gradient_checkpointing, TRL 1.16): a FutureWarning mmembed cannot fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            loss = super().training_step(*args, **kwargs)
        times = {"step": time.perf_counter() - start, "generation": self._generation_seconds - generation,
                 "reward": self.grace_reward.seconds - reward}
        times["update"] = times["step"] - times["generation"] - times["reward"]
        self.step_times.append(times)
        for name, value in times.items():
            self._metrics["train"][f"timing/{name}_s"].append(value)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.infonce_weight > 0:
            loss = loss + self.infonce_weight * self._infonce(inputs)
        return loss

    def _infonce(self, inputs: dict) -> torch.Tensor:
        """InfoNCE between each rollout's rationale embedding (with gradient) and its own prompt's rationale-free
        embedding, against the other rollouts' prompts in the batch."""
        embedder = self.grace_reward.embedder
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        prompts = [row[m.bool()].tolist() for row, m in zip(inputs["prompt_ids"], inputs["prompt_mask"])]
        prefix = self._prefix_length(prompts[0])
        batch = {"input_ids": ids, "attention_mask": mask,
                 "prefix_lengths": torch.full((len(ids),), prefix, device=ids.device)}
        main, _ = embedder(batch)
        with torch.no_grad():
            anchors = self.grace_reward.embed(prompts, [prefix] * len(prompts)).to(main.device)
        logits = F.normalize(main, dim=-1) @ F.normalize(anchors, dim=-1).T / self.infonce_temperature
        same = torch.tensor([[a == b for b in prompts] for a in prompts], device=main.device)
        logits = logits.masked_fill(same & ~torch.eye(len(prompts), dtype=torch.bool, device=main.device),
                                    float("-inf"))  # the same prompt's other rollouts are not negatives
        loss = F.cross_entropy(logits, torch.arange(len(prompts), device=main.device))
        self._metrics["train"]["grace/infonce"].append(float(loss.detach()))
        return loss

    def _prefix_length(self, prompt_ids: list[int]) -> int:
        backbone = self.grace_reward.embedder.backbone
        prefix = backbone.renderer.render(_text_items(["x"])[0]).prefix
        return backbone.prefix_length(prompt_ids, prefix)

    def save_embedder(self, folder: str | Path) -> None:
        """Save the trained Embedder (LoRA merged, rationale mode kept), gathering ZeRO-3 shards first."""
        export_embedder(self, self.grace_reward.embedder, folder)


def build_grace_trainer(embedder: Embedder, args: GraceArguments, training_args) -> GraceTrainer:
    """The trainer for ``embedder`` (rationale mode, LoRA attached) on the rows of ``args``."""
    if embedder.template.system is None:
        logger.warning("no system prompt: GRACE uses %r", GRACE_SYSTEM_PROMPT)
    dataset = grace_dataset(embedder, grace_rows(args), args.max_prompt_tokens)
    reward = GraceReward(
        embedder, GraceRewardConfig(args.reward_temperature, args.negative_weight, args.clustering_weight,
                                    args.cross_group_weight, args.truncation_reward,
                                    args.truncation_penalty, args.restatement_weight, args.min_rationale_tokens,
                                    args.short_weight),
        training_args.max_completion_length, query_rationale=args.query_rationale,
        batch_size=args.reward_batch_size)
    return GraceTrainer(model=embedder.backbone.model, args=training_args, train_dataset=dataset,
                        processing_class=embedder.backbone.tokenizer, grace_reward=reward,
                        infonce_weight=args.infonce_weight, infonce_temperature=args.infonce_temperature)


def sts_spearman(embedder: Embedder, args: GraceArguments) -> float:
    """STS-B Spearman x 100 on ``args.eval_sts_file`` (on a fixed random subset of ``eval_max_pairs`` pairs when set:
    the file is in genre order)."""
    first, second, gold = read_sts_benchmark(args.eval_sts_file)
    keep = np.arange(len(gold))
    if args.eval_max_pairs and args.eval_max_pairs < len(gold):
        keep = np.sort(np.random.default_rng(0).permutation(len(gold))[: args.eval_max_pairs])
    return round(spearman_of_pairs(embedder, [first[i] for i in keep], [second[i] for i in keep], gold[keep],
                                   batch_size=16), 2)


def held_apart_scores(embedder: Embedder, args: GraceArguments, before: dict | None = None) -> dict:
    """The held-apart scores x 100: retrieval MRR@10 and accuracy@1, STS-B Spearman (those whose data is set),
    logged as the untrained model's, or with ``before`` (the untrained model's) as ``untrained -> trained``."""
    out = {}
    if args.eval_retrieval_dir:
        task = next(iter(evaluate_retrieval(embedder, args.eval_retrieval_dir, batch_size=16).tasks.values()))
        out.update(retrieval_mrr10=round(task["mrr@10"], 2), retrieval_acc1=round(task["recall@1"], 2))
        out.update(rationale_overlap(embedder, list(read_beir(args.eval_retrieval_dir)[0].values())))
    if args.eval_sts_file:
        out["sts_spearman"] = sts_spearman(embedder, args)
    if before is None and out:
        logger.warning("held-apart scores x100 of the untrained model (rationale mode): %s",
                       ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
    for key in before or {}:
        scale = "" if key == "rationale_words" else " x100"
        logger.warning("%s%s on held-apart data: %.2f (untrained) -> %.2f (trained)", key, scale, before[key], out[key])
    return out


def rationale_overlap(embedder: Embedder, texts: list[str], examples: int = 2) -> dict:
    """How far the greedy rationales of ``texts`` are from restating them (:func:`~mmembed.rationale.restatement_stats`:
    ``restatement_pct``, ``rationale_rouge_l`` x 100, ``rationale_words``); logs the first ``examples``."""
    _, rationales = embedder.encode(texts, batch_size=16, return_rationales=True)
    stats = restatement_stats(rationales, texts)
    for text, rationale in list(zip(texts, rationales))[:examples]:
        logger.warning("rationale example: %r -> %r", text, rationale)
    return {"restatement_pct": round(100 * stats["restatement_share"], 2),
            "rationale_rouge_l": round(100 * stats["rouge_l"], 2), "rationale_words": round(stats["rationale_words"], 1)}


def train_grace(trainer: GraceTrainer, training_args: GraceConfig, before: dict) -> tuple[dict, Path]:
    """Train (resuming from ``resume_from_checkpoint``), save the Embedder to ``<output_dir>/final`` and, on the
    main process, the reward history (``reward_history.json``) and curve (``reward_curve.png``). Returns the
    summary (seconds, steps, ``before``'s scores as ``<key>_before``, mean seconds of a step's parts, first and last
    mean reward, the curve's file) and the final folder."""
    start = time.time()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    result: dict = {"train_seconds": round(time.time() - start, 1), "steps": trainer.state.global_step}
    result.update({f"{k}_before": v for k, v in before.items()})
    if trainer.step_times:
        result["seconds_per_step"] = {k: round(float(np.mean([t[k] for t in trainer.step_times])), 2)
                                      for k in ("step", "generation", "reward", "update")}
    output_dir = Path(training_args.output_dir)
    final = output_dir / "final"
    trainer.save_embedder(final)
    history = trainer.grace_reward.history
    if trainer.is_world_process_zero() and history:
        result["reward_first"], result["reward_last"] = round(history[0]["reward"], 3), round(history[-1]["reward"], 3)
        (output_dir / "reward_history.json").write_text(json.dumps(history, indent=1))
        curve = save_curve([h["reward"] for h in history], output_dir / "reward_curve.png",
                           title="GRACE mean reward", xlabel="generation batch", ylabel="mean reward")
        if curve is not None:
            result["reward_curve"] = str(curve)
    return result, final


class Grace(Method):
    """The ``grace`` recipe (the Quickstart's job)."""

    name = "grace"
    arguments: ClassVar[dict[str, type]] = {"model": ModelArguments, "grace": GraceArguments,
                                            "training": GraceConfig}
    defaults: ClassVar[dict[str, Any]] = {**GRPO_DEFAULTS, "chat": True, "system_prompt": GRACE_SYSTEM_PROMPT,
                                          "pooling": "mean_excluding_prefix"}
    print_everywhere = False

    def read_data(self, args: RecipeArgs) -> None:
        return None  # the rows are read with the tokenizer, by build_grace_trainer

    def build_embedder(self, args: RecipeArgs) -> Embedder:
        training = args.training
        rationale = RationaleConfig(max_new_tokens=args.grace.rationale_max_tokens or training.max_completion_length)
        return build_embedder(args.model, rationale=rationale)

    def has_scores(self, args: RecipeArgs, data: Any) -> bool:
        return bool(args.grace.eval_retrieval_dir or args.grace.eval_sts_file)

    def score(self, embedder: Embedder, args: RecipeArgs, data: Any, before: dict | None = None) -> dict:
        return held_apart_scores(embedder, args.grace, before=before)

    def build(self, args: RecipeArgs, embedder: Embedder, data: Any) -> Any:
        return build_grace_trainer(embedder, args.grace, args.training)

    def train(self, trainer: Any, args: RecipeArgs) -> tuple[dict, str]:
        summary, final = train_grace(trainer, args.training, before={})
        return {**summary, "model": str(final)}, str(final)

    def format_result(self, result: dict) -> str:
        """The result as one JSON line starting ``{"train_seconds": ..., "steps": ...`` (what scripts look for)."""
        first = {key: result[key] for key in ("train_seconds", "steps") if key in result}
        return json.dumps({**first, **result})
