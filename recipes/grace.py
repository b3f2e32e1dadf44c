"""GRACE: generative representation learning via contrastive policy optimisation (ICLR 2026), on TRL's GRPO: the LLM
writes a rationale for each text, its mean-pooled hidden states are the embedding, contrastive similarities are the
rewards (:mod:`mmembed.train.methods.grace` says more). Saves
``<output_dir>/final`` (an Embedder in rationale mode) and ``<output_dir>/reward_curve.png``; scores the untrained
and the trained model on ``--eval_retrieval_dir`` (MRR@10, accuracy@1) and ``--eval_sts_file`` (STS-B Spearman) when
given.

    accelerate launch recipes/grace.py      # the bundled config: SmolLM2-135M, WordNet data shipped in recipes/data
    accelerate launch recipes/grace.py --config recipes/configs/grace.yaml [--key value ...]
    accelerate launch --config_file ds_configs/accelerate/zero2.yaml recipes/grace.py --config ...
"""

from pathlib import Path

from mmembed.train.methods.grace import Grace
from mmembed.train.methods.runner import run_method, run_recipe

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "grace.yaml"


def main(argv: list[str] | None = None) -> dict:
    """Train and score as the config (the bundled one unless ``--config``) and the command line say; returns the
    result dict (printed last, as JSON, by the main process)."""
    return run_method(Grace(), argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    run_recipe(main)
