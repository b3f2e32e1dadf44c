"""GRACE: generative representation learning via contrastive policy optimisation (ICLR 2026), on TRL's GRPO.

The LLM writes a rationale (within <think></think>) for each text; the mean of its last hidden states over text +
rationale (system prompt left out) is the embedding; contrastive similarities of those embeddings are the GRPO
rewards (8 rollouts per prompt, no KL, no reward-std scaling, clip 0.2, LoRA). The negative and cross-group terms
are computed on each rollout's own embedding, so GRPO's group-mean subtraction does not cancel them (it does in the
public code). The model is saved as an Embedder in rationale mode (``<output_dir>/final``: ``mmembed.load`` encodes
with a greedy rationale), the reward curve as ``<output_dir>/reward_curve.png``; the untrained and the trained model
are scored on ``--eval_retrieval_dir`` (a BEIR folder: MRR@10 and accuracy@1) and ``--eval_sts_file`` (STS-B
Spearman) when given.

    accelerate launch recipes/grace.py      # the bundled config: SmolLM2-135M, WordNet data shipped in recipes/data
    accelerate launch recipes/grace.py --config recipes/configs/grace.yaml [--key value ...]
    accelerate launch --config_file ds_configs/accelerate/zero2.yaml recipes/grace.py --config ...
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from trl import TrlParser

import mmembed
from mmembed.eval.retrieval import evaluate_retrieval
from mmembed.eval.sts import read_sts_benchmark, spearman_of_pairs
from mmembed.rationale import GRACE_SYSTEM_PROMPT, RationaleConfig
from mmembed.train import distributed
from mmembed.train.arguments import ModelArguments
from mmembed.train.build import build_embedder
from mmembed.train.grace import GRPO_DEFAULTS, GraceArguments, GraceConfig, build_grace_trainer
from mmembed.train.plots import save_curve
from mmembed.train.run import parse_recipe_args, run_recipe

logger = logging.getLogger("grace")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "grace.yaml"


def sts(embedder, args: GraceArguments) -> float:
    """STS-B Spearman x 100 (on a fixed random subset of ``eval_max_pairs`` pairs when set: the file is in genre
    order)."""
    first, second, gold = read_sts_benchmark(args.eval_sts_file)
    keep = np.arange(len(gold))
    if args.eval_max_pairs and args.eval_max_pairs < len(gold):
        keep = np.sort(np.random.default_rng(0).permutation(len(gold))[: args.eval_max_pairs])
    return round(spearman_of_pairs(embedder, [first[i] for i in keep], [second[i] for i in keep], gold[keep],
                                   batch_size=16), 2)


def scores(embedder, args: GraceArguments) -> dict:
    """The held-apart scores x 100: retrieval MRR@10 and accuracy@1, STS-B Spearman (those whose data is set)."""
    out = {}
    if args.eval_retrieval_dir:
        task = next(iter(evaluate_retrieval(embedder, args.eval_retrieval_dir, batch_size=16).tasks.values()))
        out.update(retrieval_mrr10=round(task["mrr@10"], 2), retrieval_acc1=round(task["recall@1"], 2))
    if args.eval_sts_file:
        out["sts_spearman"] = sts(embedder, args)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    parser = TrlParser((ModelArguments, GraceArguments, GraceConfig))
    parser.set_defaults(**GRPO_DEFAULTS, **distributed.training_defaults(), chat=True,
                        system_prompt=GRACE_SYSTEM_PROMPT, pooling="mean_excluding_prefix")
    model_args, grace_args, training_args = parse_recipe_args(parser, argv)
    rationale = RationaleConfig(max_new_tokens=grace_args.rationale_max_tokens or training_args.max_completion_length)
    embedder = build_embedder(model_args, rationale=rationale)
    trainer = build_grace_trainer(embedder, grace_args, training_args)
    main_process = trainer.is_world_process_zero()
    before = scores(embedder, grace_args) if main_process else {}
    if before:
        logger.warning("held-apart scores x100 of the untrained model (rationale mode): %s",
                       ", ".join(f"{k} {v:.2f}" for k, v in before.items()))
    start = time.time()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    result: dict = {"train_seconds": round(time.time() - start, 1), "steps": trainer.state.global_step}
    result.update({f"{k}_before": v for k, v in before.items()})
    if trainer.step_times:
        result["seconds_per_step"] = {k: round(float(np.mean([t[k] for t in trainer.step_times])), 2)
                                      for k in ("step", "generation", "reward", "update")}
    final = Path(training_args.output_dir) / "final"
    trainer.save_embedder(final)
    history = trainer.grace_reward.history
    if main_process and history:
        result["reward_first"], result["reward_last"] = round(history[0]["reward"], 3), round(history[-1]["reward"], 3)
        (Path(training_args.output_dir) / "reward_history.json").write_text(json.dumps(history, indent=1))
        curve = save_curve([h["reward"] for h in history], Path(training_args.output_dir) / "reward_curve.png",
                           title="GRACE mean reward", xlabel="generation batch", ylabel="mean reward")
        if curve is not None:
            result["reward_curve"] = str(curve)
    if before:
        result.update(scores(mmembed.load(final, device=str(training_args.device)), grace_args))
        for key in before:
            logger.warning("%s x100 on held-apart data: %.2f (untrained) -> %.2f (trained)", key, before[key],
                           result[key])
    result["model"] = str(final)
    if main_process:
        print(json.dumps(result), flush=True)
    del trainer
    distributed.teardown()
    return result


if __name__ == "__main__":
    run_recipe(main)
