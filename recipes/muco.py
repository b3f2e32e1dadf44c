"""MuCo: multi-turn contrastive learning for multimodal embedding models (Kim et al., CVPR 2026).

Pretraining packs K (query, target) pairs about one image into one conversation with an ``<|emb|>`` reply per turn:
one forward pass gives K embeddings, the image is encoded once, and the other turns of a conversation are masked as
negatives (tau 0.02). Fine-tuning adds an auxiliary ``<|emb|>`` after a masked rewrite of the other side (four
InfoNCE terms). LoRA (or DoRA, ``--use_dora``) on the language model plus the rows of ``<|emb|>`` / ``<|mask|>``;
gradient caching (``--mini_batch_size``) works on packed batches. The model is saved merged (``<output_dir>/final``)
and, with ``--eval_mmeb_dir``, scored on an MMEB-format folder (Precision@1) before and after training.
The method: :mod:`mmembed.train.methods.muco`.

    accelerate launch recipes/muco.py --config recipes/configs/muco_pretrain.yaml [--key value ...]
    accelerate launch --config_file ds_configs/accelerate/zero2.yaml recipes/muco.py --config ...
"""

from mmembed.train.methods.muco import MuCo
from mmembed.train.methods.runner import run_method, run_recipe


def main(argv: list[str] | None = None) -> dict:
    """Train and score as the config and the command line say; returns the result dict (printed last)."""
    return run_method(MuCo(), argv)


if __name__ == "__main__":
    run_recipe(main)
