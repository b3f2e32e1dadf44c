"""GRACE: generative representation learning via contrastive policy optimisation (ICLR 2026), on TRL's GRPO: the LLM
writes a rationale for each text, its mean-pooled hidden states are the embedding, contrastive similarities are the
rewards (:mod:`mmembed.train.grace` says more). Saves ``<output_dir>/final`` (an Embedder in rationale mode) and
``<output_dir>/reward_curve.png``; scores the untrained and the trained model on ``--eval_retrieval_dir`` (MRR@10,
accuracy@1) and ``--eval_sts_file`` (STS-B Spearman) when given.

    accelerate launch recipes/grace.py      # the bundled config: SmolLM2-135M, WordNet data shipped in recipes/data
    accelerate launch recipes/grace.py --config recipes/configs/grace.yaml [--key value ...]
    accelerate launch --config_file ds_configs/accelerate/zero2.yaml recipes/grace.py --config ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trl import TrlParser

import mmembed
from mmembed.rationale import GRACE_SYSTEM_PROMPT, RationaleConfig
from mmembed.train import distributed, grace
from mmembed.train.arguments import ModelArguments
from mmembed.train.build import build_embedder
from mmembed.train.run import parse_recipe_args, run_recipe

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "grace.yaml"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    parser = TrlParser((ModelArguments, grace.GraceArguments, grace.GraceConfig))
    parser.set_defaults(**grace.GRPO_DEFAULTS, **distributed.training_defaults(), chat=True,
                        system_prompt=GRACE_SYSTEM_PROMPT, pooling="mean_excluding_prefix")
    model_args, grace_args, training_args = parse_recipe_args(parser, argv)
    rationale = RationaleConfig(max_new_tokens=grace_args.rationale_max_tokens or training_args.max_completion_length)
    embedder = build_embedder(model_args, rationale=rationale)
    trainer = grace.build_grace_trainer(embedder, grace_args, training_args)
    main_process = trainer.is_world_process_zero()
    before = grace.held_apart_scores(embedder, grace_args) if main_process else {}
    result, final = grace.train_grace(trainer, training_args, before)
    if before:
        trained = mmembed.load(final, device=str(training_args.device))
        result.update(grace.held_apart_scores(trained, grace_args, before=before))
    result["model"] = str(final)
    if main_process:
        print(json.dumps(result), flush=True)
    del trainer
    distributed.teardown()
    return result


if __name__ == "__main__":
    run_recipe(main)
