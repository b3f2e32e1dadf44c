"""GRACE step breakdown: seconds per GRPO step spent generating rollouts, computing rewards and updating the policy.

Runs the GRACE trainer (recipes/grace.py's objects) on SICK triplets for ``--steps`` steps after one warm-up step,
twice: with the query / negative embedded with a greedy rationale of the current policy (the default, as the
trained model encodes them), and with their text alone (``query_rationale=False``). Prints the mean split of each and
the reward-time ratio between them. The update includes TRL's log-probability pass and the optimizer step.

Run: ``.venv/bin/python bench/grace.py`` (default model: the embedded SmolLM2-135M; ``--model`` takes any folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from trl import GRPOConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmembed.rationale import GRACE_SYSTEM_PROMPT, RationaleConfig
from mmembed.train.arguments import ModelArguments
from mmembed.train.build import build_embedder
from mmembed.train.distributed import bf16_available
from mmembed.train.methods.grace import GRPO_DEFAULTS, GraceArguments, build_grace_trainer

SICK = ROOT.parent / "shared" / "data" / "sick"


def run(args: argparse.Namespace, query_rationale: bool) -> dict[str, float]:
    model_args = ModelArguments(model_name_or_path=args.model, chat=True, system_prompt=GRACE_SYSTEM_PROMPT,
                                pooling="mean_excluding_prefix", lora_r=16, lora_alpha=32, lora_dropout=0.0)
    embedder = build_embedder(model_args, rationale=RationaleConfig(max_new_tokens=args.completion_tokens))
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(**{**GRPO_DEFAULTS, "num_generations": args.generations}, output_dir=out,
                            per_device_train_batch_size=args.generations * args.prompts,
                            max_completion_length=args.completion_tokens, max_steps=args.steps + 1,
                            learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to="none",
                            disable_tqdm=True, bf16=bf16_available(), use_cpu=args.device == "cpu", seed=0)
        trainer = build_grace_trainer(embedder, GraceArguments(train_file=str(SICK), train_format="sick",
                                                               max_train_samples=256,
                                                               query_rationale=query_rationale), config)
        trainer.train()
    timed = trainer.step_times[1:]  # the first step warms up
    result = {k: float(np.mean([t[k] for t in timed])) for k in ("step", "generation", "reward", "update")}
    history = trainer.grace_reward.history  # the rollouts' overlap with their input (restating, not explaining)
    result.update({k: float(np.mean([h[k] for h in history])) for k in ("rouge_l", "restatement", "truncated")})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    results = {"query rationale (default)": run(args, True), "query text only": run(args, False)}
    print(f"GRACE step on {args.model or 'SmolLM2-135M'} ({args.device}): {args.prompts} prompts x "
          f"{args.generations} rollouts, <= {args.completion_tokens} tokens, mean of {args.steps} steps")
    print(f"{'setting':28s} {'step s':>7s} {'generation s':>15s} {'reward s':>15s} {'update s':>15s}")
    for name, r in results.items():
        parts = " ".join(f"{r[k]:7.2f} ({100 * r[k] / r['step']:3.0f}%)" for k in ("generation", "reward", "update"))
        print(f"{name:28s} {r['step']:7.2f} {parts}")
    for name, r in results.items():
        print(f"{name:28s} rollouts: ROUGE-L with the input {r['rouge_l']:.3f}, restatements (>= 0.6) "
              f"{100 * r['restatement']:.1f}%, cut at the limit {100 * r['truncated']:.1f}%")
    a, b = results["query rationale (default)"], results["query text only"]
    print(f"reward time, query rationale vs text only: {a['reward'] / b['reward']:.2f}x; "
          f"step time: {a['step'] / b['step']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
