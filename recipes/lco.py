"""LCO: language-centric contrastive refinement of an (M)LLM embedder (Xiao et al., NeurIPS 2025).

Text-only (mostly NLI) InfoNCE with hard negatives, LoRA on the language model only, last-token embeddings after
"Summarize the above ... in one word:" prompts; the alignment learned on text carries over to images. At the end the
model is saved as an mmembed folder and, if ``eval_sts_file`` is set, scored on STS-B (Spearman x 100).
The method: :mod:`mmembed.train.methods.contrastive`.

    accelerate launch recipes/lco.py --config recipes/configs/lco.yaml [--key value ...]
    accelerate launch --config_file ds_configs/accelerate/zero2.yaml recipes/lco.py --config ...
"""

from mmembed.train.methods.contrastive import LCO
from mmembed.train.methods.runner import run_method, run_recipe


def main(argv: list[str] | None = None) -> dict:
    """Train and score as the config and the command line say; returns the result dict (printed last)."""
    return run_method(LCO(), argv)


if __name__ == "__main__":
    run_recipe(main)
