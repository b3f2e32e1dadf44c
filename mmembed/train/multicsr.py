"""MultiCSR stages 1-2 as a run (``recipes/multicsr_data.py``): its arguments, its inputs (one sentence a line, or a
SICK folder: its distinct sentences, as MultiCSR uses NLI premises) and the triplet file written chunk by chunk with
the instruct LLM (:func:`mmembed.data.multicsr.write_triplets`; resumable, an output it did not write is refused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from .. import defaults
from ..backbone import load_base_model, resolve_model_path
from ..data.formats import read_sick_triplets, text_lines
from ..data.multicsr import FILTER_PRESETS, MultiCSRConfig, read_report, write_triplets
from ..data.rows import sentences_of
from ..files import check_output_file
from .checks import POSITIVE_INT, Rule, check_fields

FILTER_TYPE = Rule(lambda v: type(v) is int and v in FILTER_PRESETS, f"one of {', '.join(map(str, FILTER_PRESETS))}")


@dataclass
class MultiCSRDataArguments:
    """Options of ``recipes/multicsr_data.py``."""

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
    """The input sentences: the distinct sentences of a SICK folder's triplets, or a file's non-empty lines."""
    if Path(path).is_dir():
        return sentences_of([read_sick_triplets(path)])
    return [line.strip() for _, line in text_lines(path) if line.strip()]


def make_triplet_file(args: MultiCSRDataArguments) -> dict:
    """Write (or resume) ``args.output_file``; returns the report (processed inputs, kept and dropped by reason).
    The output file is checked before the model loads: a file this run did not write is refused."""
    out = check_output_file(args.output_file, what="--output_file")
    report = read_report(out, Path(f"{args.output_file}.report.json"))
    sentences = read_inputs(args.input_file)[: args.max_sentences]
    path, _ = resolve_model_path(args.model_name_or_path or defaults.gguf_path())
    model = load_base_model(path, causal_lm=True).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = MultiCSRConfig(filter_type=args.filter_type, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size)
    return write_triplets(model, tokenizer, sentences, out, report, config, args.chunk_size)
