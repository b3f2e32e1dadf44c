"""The contrastive sentence-embedding methods on one recipe: SimCSE (unsup / sup), ESimCSE, DebCSE, WhitenedCSE,
CCP, and MultiCSR's masking (``sup`` + ``false_negative_threshold`` on triplets from ``recipes/multicsr_data.py``).

The method is a config value (``method: unsup | sup | esimcse | debcse | whitened | ccp``, see
``mmembed.train.methods``); everything else is the usual trainer: LoRA on decoder LLMs (or ``lora: false`` for
small encoders), gradient caching, DDP / DeepSpeed. At the end the model is saved as an mmembed folder and, with
``eval_sts_file``, scored on STS-B (Spearman x 100; ``eval_before_training`` scores the untrained model too).

    accelerate launch recipes/simcse.py --config recipes/configs/simcse_smollm2.yaml [--method esimcse ...]

``elastic: starbucks`` (or ``2dmse``) trains the loss at (layers, dimensions) pairs too, so that the saved model
can be loaded cut: ``mmembed.load(final, layer=15, dim=288)`` (``recipes/configs/starbucks_smollm2.yaml``).
"""

from __future__ import annotations

import logging

from trl import TrlParser

import mmembed
from mmembed.eval.sts import sts_benchmark_spearman
from mmembed.train import distributed
from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from mmembed.train.build import build_embedder
from mmembed.train.elastic import ElasticArguments
from mmembed.train.methods import MethodArguments, build_method_trainer, method_data
from mmembed.train.run import parse_recipe_args, run_recipe

logger = logging.getLogger("simcse")


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((ModelArguments, DataArguments, MethodArguments, ElasticArguments,
                        ContrastiveTrainingArguments))
    parser.set_defaults(**distributed.training_defaults())
    model_args, data_args, method_args, elastic_args, training_args = parse_recipe_args(parser, argv)
    parts = method_data(method_args, data_args)  # the data first: a bad row stops the run before the model loads
    embedder = build_embedder(model_args, seed=training_args.seed)
    result: dict = {"method": method_args.method}
    if data_args.eval_sts_file and data_args.eval_before_training and training_args.process_index == 0:
        result["sts_spearman_before"] = round(sts_benchmark_spearman(embedder.eval(), data_args.eval_sts_file), 2)
        embedder.train()
    trainer = build_method_trainer(method_args, data_args, training_args, embedder, elastic_args, parts)
    summary, final = trainer.train_and_export()
    result.update(summary)
    if data_args.eval_sts_file and trainer.is_world_process_zero():
        saved = mmembed.load(final, device=str(training_args.device))  # the exported model, LoRA merged
        result["sts_spearman"] = round(sts_benchmark_spearman(saved, data_args.eval_sts_file), 2)
        logger.warning("%s: STS-B Spearman x100 of the trained model: %.2f", method_args.method,
                       result["sts_spearman"])
    print(result, flush=True)
    del trainer
    distributed.teardown()
    return result


if __name__ == "__main__":
    run_recipe(main)
