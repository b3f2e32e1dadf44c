"""LCO: language-centric contrastive refinement of an (M)LLM embedder (Xiao et al., NeurIPS 2025).

Text-only (mostly NLI) InfoNCE with hard negatives, LoRA on the language model only, last-token embeddings after
"Summarize the above ... in one word:" prompts; the alignment learned on text carries over to images. At the end the
model is saved as an mmembed folder and, if ``eval_sts_file`` is set, scored on STS-B (Spearman x 100).

    accelerate launch recipes/lco.py --config recipes/configs/lco.yaml [--key value ...]
    accelerate launch --config_file ds_configs/accelerate/zero2.yaml recipes/lco.py --config ...
"""

from __future__ import annotations

import logging

from trl import TrlParser

import mmembed
from mmembed.eval.sts import sts_benchmark_spearman
from mmembed.train import distributed
from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from mmembed.train.build import build_trainer
from mmembed.train.run import parse_recipe_args, run_recipe

logger = logging.getLogger("lco")


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((ModelArguments, DataArguments, ContrastiveTrainingArguments))
    parser.set_defaults(**distributed.training_defaults())
    model_args, data_args, training_args = parse_recipe_args(parser, argv)
    trainer = build_trainer(model_args, data_args, training_args)
    result: dict = {}
    if data_args.eval_sts_file and data_args.eval_before_training and trainer.is_world_process_zero():
        result["sts_spearman_before"] = round(sts_benchmark_spearman(trainer.embedder.eval(),
                                                                     data_args.eval_sts_file), 2)
        trainer.embedder.train()
    summary, final = trainer.train_and_export()
    result.update(summary)
    if data_args.eval_sts_file and trainer.is_world_process_zero():
        saved = mmembed.load(final, device=str(training_args.device))  # the exported model, LoRA merged
        result["sts_spearman"] = round(sts_benchmark_spearman(saved, data_args.eval_sts_file), 2)
        logger.warning("STS-B Spearman x100 of the trained model: %.2f", result["sts_spearman"])
    print(result, flush=True)
    del trainer
    distributed.teardown()
    return result


if __name__ == "__main__":
    run_recipe(main)
