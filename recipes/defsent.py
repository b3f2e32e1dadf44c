"""DefSent+ (Liu, arXiv 2405.16153): train the encoder to classify each WordNet definition to its entry, against
frozen entry embeddings rebuilt every stage by the previous stage's model, each stage restarting from the initial
model (progressive separate training). The stages, the files written (``stages.json``, ``entries.json``,
``stage<k>/``, ``final``) and the data: :mod:`mmembed.train.defsent`. The last line printed is the result dict
(``{'method': 'defsent', ...}``).

    python recipes/defsent.py --config recipes/configs/defsent_smollm2.yaml [--stages 3 --ica true ...]
"""

from __future__ import annotations

from trl import TrlParser

from mmembed.train import distributed
from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from mmembed.train.defsent import DefSentArguments, prepare_entries, train_defsent
from mmembed.train.run import parse_recipe_args, run_recipe


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((ModelArguments, DataArguments, DefSentArguments, ContrastiveTrainingArguments))
    parser.set_defaults(**distributed.training_defaults())
    model_args, data_args, defsent_args, training_args = parse_recipe_args(parser, argv)  # seeds the run
    entries = prepare_entries(data_args, defsent_args, training_args)
    # learnable_temperature, symmetric, gather_across_devices: parsed, not read (mmembed.train.defsent.train_stage)
    result = train_defsent(model_args, data_args, defsent_args, training_args, entries)
    print(result, flush=True)
    distributed.teardown()
    return result


if __name__ == "__main__":
    run_recipe(main)
