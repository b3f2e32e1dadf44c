"""The contrastive sentence-embedding methods on one recipe: SimCSE (unsup / sup), ESimCSE, DebCSE, WhitenedCSE,
CCP, and MultiCSR's masking (``sup`` + ``false_negative_threshold`` on triplets from ``recipes/multicsr_data.py``).

The variant is a config value (``method: unsup | sup | esimcse | debcse | whitened | ccp``, registered in
:mod:`mmembed.train.methods.simcse`); everything else is the usual trainer: LoRA on decoder LLMs (or ``lora: false``
for small encoders), gradient caching, DDP / DeepSpeed. At the end the model is saved as an mmembed folder and, with
``eval_sts_file``, scored on STS-B (Spearman x 100; ``eval_before_training`` scores the untrained model too).

    accelerate launch recipes/simcse.py --config recipes/configs/simcse_smollm2.yaml [--method esimcse ...]

``elastic: starbucks`` (or ``2dmse``) trains the loss at (layers, dimensions) pairs too, so that the saved model
can be loaded cut: ``mmembed.load(final, layer=15, dim=288)`` (``recipes/configs/starbucks_smollm2.yaml``).
"""

from mmembed.train.methods.runner import run_method, run_recipe
from mmembed.train.methods.simcse import SimCSE


def main(argv: list[str] | None = None) -> dict:
    """Train and score as the config and the command line say; returns the result dict (printed last)."""
    return run_method(SimCSE(), argv)


if __name__ == "__main__":
    run_recipe(main)
