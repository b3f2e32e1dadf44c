"""Distilled Sentence Embedding (DSE): a bi-encoder student learns a teacher's pair scores.

``(1 - alpha) * task + alpha * MSE(student cosine, teacher score)``; the teacher (an embedding model, a
CrossEncoder or a file of scores), the data formats and the score cache are described in
:mod:`mmembed.train.distill`. At the end the model is saved and, with ``eval_sts_file``, scored on STS-B.

    accelerate launch recipes/distill.py --config recipes/configs/distill_smollm2.yaml
"""

from __future__ import annotations

import logging

from trl import TrlParser

from mmembed.train import distill, distributed
from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from mmembed.train.build import build_embedder
from mmembed.train.distill import DistillArguments, graded_rows, training_rows  # noqa: F401 (tests read them here)
from mmembed.train.run import parse_recipe_args, run_recipe

logger = logging.getLogger("distill")


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((ModelArguments, DataArguments, DistillArguments, ContrastiveTrainingArguments))
    parser.set_defaults(**distributed.training_defaults())
    model_args, data_args, args, training_args = parse_recipe_args(parser, argv)
    rows, result = distill.scored_rows(data_args, args, training_args)
    embedder = build_embedder(model_args, seed=training_args.seed)  # the same LoRA init whether or not the teacher ran
    result.update(distill.score_before(embedder, rows, args, data_args, training_args))
    trainer = distill.build_distill_trainer(embedder, rows, args, data_args, training_args)
    summary, final = trainer.train_and_export()
    result.update(summary)
    if trainer.is_world_process_zero():
        result.update(distill.score_final(final, rows, args, data_args, training_args))
        if "sts_spearman" in result:
            logger.warning("distill: STS-B Spearman x100 of the trained model: %.2f", result["sts_spearman"])
    print(result, flush=True)
    del trainer
    distributed.teardown()
    return result


if __name__ == "__main__":
    run_recipe(main)
