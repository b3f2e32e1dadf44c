"""MultiCSR stages 1-2: an instruct LLM writes an entailed and a contradicting sentence for each input sentence,
scores both pairs, and the triplets that pass the thresholds are written as JSON lines for ``recipes/simcse.py``
(``--method sup --train_format triplets``, with ``--false_negative_threshold 0.95`` for MultiCSR's stage 3).

    python recipes/multicsr_data.py --input_file ../shared/data/sick --output_file out/multicsr.jsonl \
        [--model_name_or_path <instruct LLM; default: the embedded SmolLM2-135M-Instruct>] [--max_sentences 500]

Inputs are one sentence a line, or a SICK folder (its distinct sentences, as MultiCSR uses NLI premises). Work goes
in chunks: kept triplets are appended and the count of processed inputs is saved after each chunk
(``<output>.report.json``, written whole or not at all), so an interrupted run continues where it stopped. An output
file without its report was not written by this script: it is refused, never emptied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from transformers import AutoTokenizer, HfArgumentParser

from mmembed import defaults
from mmembed.backbone import load_base_model, resolve_model_path
from mmembed.data.formats import read_sick_triplets, text_lines
from mmembed.data.multicsr import FILTER_PRESETS, MultiCSRConfig, generate_triplets, read_report
from mmembed.files import check_output_file, write_text
from mmembed.train.checks import POSITIVE_INT, Rule, check_fields
from mmembed.train.methods import sentences_of
from mmembed.train.run import run_recipe

FILTER_TYPE = Rule(lambda v: type(v) is int and v in FILTER_PRESETS, f"one of {', '.join(map(str, FILTER_PRESETS))}")


@dataclass
class MultiCSRDataArguments:
    input_file: str = field(metadata={"help": "sentences (one a line) or a SICK folder"})
    output_file: str = field(metadata={"help": "triplets JSON lines (appended to when resuming)"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "instruct LLM (default: SmolLM2-135M)"})
    max_sentences: int | None = None
    filter_type: int = field(default=15, metadata={"help": "flan_filter preset: 15 = (3, 3, gap), 2, 13"})
    max_new_tokens: int = 40
    batch_size: int = 8
    chunk_size: int = field(default=64, metadata={"help": "inputs between two saves"})
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_fields(self, {"max_sentences": POSITIVE_INT, "filter_type": FILTER_TYPE,
                            "max_new_tokens": POSITIVE_INT, "batch_size": POSITIVE_INT, "chunk_size": POSITIVE_INT})


def read_inputs(path: str) -> list[str]:
    if Path(path).is_dir():
        return sentences_of([read_sick_triplets(path)])
    return [line.strip() for _, line in text_lines(path) if line.strip()]


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(MultiCSRDataArguments).parse_args_into_dataclasses(argv)
    out = check_output_file(args.output_file, what="--output_file")
    report_file = Path(f"{args.output_file}.report.json")
    report = read_report(out, report_file)  # before the model loads: a file it did not write is refused
    sentences = read_inputs(args.input_file)[: args.max_sentences]
    path, _ = resolve_model_path(args.model_name_or_path or defaults.gguf_path())
    model = load_base_model(path, causal_lm=True).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if report["inputs"] == 0:
        write_text(out, "")
    config = MultiCSRConfig(filter_type=args.filter_type, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size)
    for start in tqdm(range(report["inputs"], len(sentences), args.chunk_size), desc="MultiCSR chunks"):
        rows, counts = generate_triplets(model, tokenizer, sentences[start:start + args.chunk_size], config)
        with out.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        for key, value in counts.items():
            report[key] = report.get(key, 0) + value
        write_text(report_file, json.dumps(report, indent=1))
    print(report, flush=True)
    return report


if __name__ == "__main__":
    run_recipe(main)
