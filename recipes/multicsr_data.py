"""MultiCSR stages 1-2: an instruct LLM writes an entailed and a contradicting sentence for each input sentence,
scores both pairs, and the triplets that pass the thresholds are written as JSON lines for ``recipes/simcse.py``
(``--method sup --train_format triplets``, with ``--false_negative_threshold 0.95`` for MultiCSR's stage 3).

    python recipes/multicsr_data.py --input_file ../shared/data/sick --output_file out/multicsr.jsonl \
        [--model_name_or_path <instruct LLM; default: the embedded SmolLM2-135M-Instruct>] [--max_sentences 500]

Inputs are one sentence a line, or a SICK folder. The run is resumable (``<output>.report.json``) and never empties
a file it did not write (:mod:`mmembed.train.multicsr`, :mod:`mmembed.data.multicsr`).
"""

from __future__ import annotations

from transformers import HfArgumentParser

from mmembed.train.multicsr import MultiCSRDataArguments, make_triplet_file
from mmembed.train.run import run_recipe


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(MultiCSRDataArguments).parse_args_into_dataclasses(argv)
    report = make_triplet_file(args)
    print(report, flush=True)
    return report


if __name__ == "__main__":
    run_recipe(main)
