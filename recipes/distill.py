"""Distilled Sentence Embedding (DSE): a bi-encoder student learns a teacher's pair scores.

``(1 - alpha) * task + alpha * MSE(student cosine, teacher score)``; the teacher (an embedding model, a
CrossEncoder or a file of scores), the data formats and the score cache are described in
:mod:`mmembed.train.methods.distill`. At the end the model is saved and, with ``eval_sts_file``, scored on
STS-B.

    accelerate launch recipes/distill.py --config recipes/configs/distill_smollm2.yaml
"""

from mmembed.train.methods.distill import Distill
from mmembed.train.methods.runner import run_method, run_recipe


def main(argv: list[str] | None = None) -> dict:
    """Score the rows with the teacher (cached), train the student, score it; returns the result dict (printed
    last)."""
    return run_method(Distill(), argv)


if __name__ == "__main__":
    run_recipe(main)
