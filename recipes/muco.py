"""MuCo: multi-turn contrastive learning for multimodal embedding models (Kim et al., CVPR 2026).

Pretraining packs K (query, target) pairs about one image into one conversation with an ``<|emb|>`` reply per turn:
one forward pass gives K embeddings, the image is encoded once, and the other turns of a conversation are masked as
negatives (tau 0.02). Fine-tuning adds an auxiliary ``<|emb|>`` after a masked rewrite of the other side (four
InfoNCE terms). LoRA (or DoRA, ``--use_dora``) on the language model plus the rows of ``<|emb|>`` / ``<|mask|>``;
gradient caching (``--mini_batch_size``) works on packed batches. The model is saved merged (``<output_dir>/final``)
and, with ``--eval_mmeb_dir``, scored on an MMEB-format folder (Precision@1) before and after training.

    accelerate launch recipes/muco.py --config recipes/configs/muco_pretrain.yaml [--key value ...]
    accelerate launch --config_file ds_configs/accelerate/zero2.yaml recipes/muco.py --config ...
"""

from __future__ import annotations

import logging

from trl import TrlParser

import mmembed
from mmembed.eval.mmeb import evaluate_mmeb
from mmembed.train import distributed
from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from mmembed.train.muco import MuCoArguments, build_muco_trainer
from mmembed.train.run import parse_recipe_args, run_recipe

logger = logging.getLogger("muco")


def score(embedder, args: MuCoArguments) -> dict:
    report = evaluate_mmeb(embedder, args.eval_mmeb_dir, image_root=args.eval_image_root,
                           max_queries=args.eval_max_queries, show_progress_bar=False)
    return {"overall": round(report.summary["overall_present"], 2),
            **{task: round(entry["score"], 2) for task, entry in report.tasks.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((ModelArguments, DataArguments, ContrastiveTrainingArguments, MuCoArguments))
    parser.set_defaults(**distributed.training_defaults(), temperature=0.02, no_duplicates=False)
    model_args, data_args, training_args, muco_args = parse_recipe_args(parser, argv)
    trainer = build_muco_trainer(model_args, data_args, training_args, muco_args)
    result: dict = {}
    if muco_args.eval_mmeb_dir and trainer.is_world_process_zero():
        result["mmeb_before"] = score(trainer.embedder, muco_args)
    summary, final = trainer.train_and_export()
    result.update(summary)
    if muco_args.eval_mmeb_dir and trainer.is_world_process_zero():
        result["mmeb_after"] = score(mmembed.load(final, device=str(training_args.device)), muco_args)
        logger.warning("MMEB-format Precision@1: %s -> %s", result.get("mmeb_before", {}).get("overall"),
                       result["mmeb_after"]["overall"])
    print(result, flush=True)
    del trainer
    distributed.teardown()
    return result


if __name__ == "__main__":
    run_recipe(main)
