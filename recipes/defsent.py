"""DefSent+ (Liu, arXiv 2405.16153): train the encoder to classify each WordNet definition to its entry, against
frozen entry embeddings rebuilt every stage by the previous stage's model, each stage restarting from the initial
model (progressive separate training). The stages, the files written (``stages.json``, ``entries.json``,
``stage<k>/``, ``final``) and the data: :mod:`mmembed.train.methods.defsent`.
The last line printed is the result dict (``{'method': 'defsent', ...}``).

    python recipes/defsent.py --config recipes/configs/defsent_smollm2.yaml [--stages 3 --ica true ...]
"""

from mmembed.train.methods.defsent import DefSent
from mmembed.train.methods.runner import run_method, run_recipe


def main(argv: list[str] | None = None) -> dict:
    """Read the entries, train every stage, score; returns the result dict (printed last)."""
    return run_method(DefSent(), argv)


if __name__ == "__main__":
    run_recipe(main)
