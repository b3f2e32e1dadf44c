"""MultiCSR stages 1-2 as a data recipe: an instruct LLM writes an entailed and a contradicting sentence for each
input sentence, scores both pairs, and the triplets that pass the thresholds are kept (``recipes/multicsr_data.py``).

Follows ``Circle-Ming/MultiCSR`` (``flan_generate_scoring.py``, ``flan_filter.py``; ``sentence_methods.md`` §7):

- generation prompts with two exemplars: "Write a sentence that is entailment with '...'" and "Write a sentence that
  is negative with '...'";
- scoring prompt: "Scoring the semantic similarity of the following sentences between 0.0 and 5.0: (a) ... (b) ...";
- stage-1 check: both scores parse, and ``negative <= 4.0`` and ``positive >= negative``; a pair that fails it the
  other way round swaps roles; else it is dropped;
- stage-2 self-curation presets ``filter_type`` (positive_line, negative_line, gap): keep when ``neg <= negative_line``
  and ``pos >= positive_line`` (and, with gap, the two scores differ). Default preset 15: (3, 3, gap).

Project's choices: the prompts go through the model's chat template (an instruct model; the reference used
Flan-T5's plain text), the scoring prompt comes after two scored exemplars (zero-shot, SmolLM2-135M writes prose
instead of a number), greedy decoding, the first line of a generation is the sentence, and every dropped input is
counted by reason in the report (nothing is dropped silently).

:func:`write_triplets` works in chunks: kept triplets are appended and the count of processed inputs is saved after
each chunk (``<output>.report.json``, written whole or not at all), so an interrupted run continues where it stopped
(:func:`read_report`). An output file without its report was not written by it: it is refused, never emptied.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from tqdm import tqdm

from ..errors import DataError, OutputPathError, is_int
from ..files import write_text
from ..rationale import RationaleConfig, generate_rationales

EXEMPLARS = {
    "entailment": [("A man is playing a guitar on stage.", "A man is performing music."),
                   ("Two dogs are running through a field.", "There are animals outdoors.")],
    "contradiction": [("A man is playing a guitar on stage.", "Nobody is playing an instrument."),
                      ("Two dogs are running through a field.", "The dogs are sleeping indoors.")],
}
INSTRUCTION = {"entailment": "Write a sentence that is entailment with '{}'.",
               "contradiction": "Write a sentence that is negative with '{}'."}
SCORE_PROMPT = ("Scoring the semantic similarity of the following sentences between 0.0 and 5.0: (a) {} (b) {}\n"
                "Answer with the score only.")
#: flan_filter.py presets: filter_type -> (positive_line, negative_line, gap)
FILTER_PRESETS: dict[int, tuple[float, float, bool]] = {15: (3.0, 3.0, True), 2: (4.0, 3.0, False),
                                                        13: (4.0, 4.0, True)}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def generation_messages(sentence: str, relation: str) -> list[dict[str, str]]:
    """Chat messages asking for a sentence with ``relation`` ("entailment" / "contradiction") to ``sentence``."""
    messages = []
    for source, target in EXEMPLARS[relation]:
        messages += [{"role": "user", "content": INSTRUCTION[relation].format(source)},
                     {"role": "assistant", "content": target}]
    return messages + [{"role": "user", "content": INSTRUCTION[relation].format(sentence)}]


SCORE_EXEMPLARS = [("A man is playing a guitar on stage.", "A man is performing music.", "4.0"),
                   ("Two dogs are running through a field.", "The dogs are sleeping indoors.", "1.0")]


def score_messages(a: str, b: str) -> list[dict[str, str]]:
    """The scoring prompt, after two scored exemplars (small instruct models answer with a number then)."""
    messages = []
    for x, y, score in SCORE_EXEMPLARS:
        messages += [{"role": "user", "content": SCORE_PROMPT.format(x, y)}, {"role": "assistant", "content": score}]
    return messages + [{"role": "user", "content": SCORE_PROMPT.format(a, b)}]


def parse_score(text: str) -> float | None:
    """The first number in ``text`` if it lies in [0, 5], else None."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    return value if 0.0 <= value <= 5.0 else None


def first_sentence(text: str) -> str:
    """The first non-empty line of a generation, without quotes around it."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line.strip("'\"").strip()


def stage1(pos_score: float | None, neg_score: float | None) -> str:
    """``"keep"``, ``"swap"`` (the 'negative' is the closer one) or a reason to drop."""
    if pos_score is None or neg_score is None:
        return "unparsed score"
    if neg_score <= 4.0 and pos_score >= neg_score:
        return "keep"
    if pos_score <= 4.0 and neg_score >= pos_score:
        return "swap"
    return "both scores above 4"


def curate(pos_score: float, neg_score: float, filter_type: int = 15) -> bool:
    """Stage 2: whether the triplet passes the preset's thresholds."""
    if filter_type not in FILTER_PRESETS:
        raise ValueError(f"filter_type {filter_type}: choose one of {sorted(FILTER_PRESETS)}.")
    positive_line, negative_line, gap = FILTER_PRESETS[filter_type]
    return neg_score <= negative_line and pos_score >= positive_line and (not gap or pos_score != neg_score)


@dataclass
class MultiCSRConfig:
    """Generation and curation settings."""

    filter_type: int = 15
    max_new_tokens: int = 40
    batch_size: int = 8


def _generate(model: nn.Module, tokenizer, conversations: Sequence[list[dict]], config: MultiCSRConfig,
              show_progress_bar: bool) -> list[str]:
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids = generate_rationales(model, tokenizer, prompts, RationaleConfig(max_new_tokens=config.max_new_tokens,
                                                                         batch_size=config.batch_size),
                              show_progress_bar=show_progress_bar)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in ids]


def generate_triplets(model: nn.Module, tokenizer, sentences: Sequence[str], config: MultiCSRConfig | None = None,
                      show_progress_bar: bool = False) -> tuple[list[dict], dict]:
    """``(rows, report)``: triplet rows ``{"anchor", "positive", "negative", "scores"}`` that pass both stages, and
    the counts of kept and dropped inputs by reason."""
    config = config or MultiCSRConfig()
    positives = [first_sentence(t) for t in _generate(
        model, tokenizer, [generation_messages(s, "entailment") for s in sentences], config, show_progress_bar)]
    negatives = [first_sentence(t) for t in _generate(
        model, tokenizer, [generation_messages(s, "contradiction") for s in sentences], config, show_progress_bar)]
    pairs = [(s, x) for s, p, n in zip(sentences, positives, negatives) for x in (p, n)]
    scores = [parse_score(t) for t in _generate(model, tokenizer, [score_messages(a, b) for a, b in pairs], config,
                                                show_progress_bar)]
    rows, report = [], Counter()
    for i, sentence in enumerate(sentences):
        pos, neg = positives[i], negatives[i]
        pos_score, neg_score = scores[2 * i], scores[2 * i + 1]
        if not pos or not neg or pos == neg or sentence in (pos, neg):
            report["empty or repeated generation"] += 1
            continue
        decision = stage1(pos_score, neg_score)
        if decision == "swap":
            pos, neg, pos_score, neg_score = neg, pos, neg_score, pos_score
            report["swapped"] += 1
        elif decision != "keep":
            report[decision] += 1
            continue
        if not curate(pos_score, neg_score, config.filter_type):
            report[f"filtered (preset {config.filter_type})"] += 1
            continue
        report["kept"] += 1
        rows.append({"anchor": sentence, "positive": pos, "negative": neg,
                     "scores": {"positive": pos_score, "negative": neg_score}})
    return rows, {"inputs": len(sentences), **dict(report)}


def read_report(out: Path, report_file: Path) -> dict:
    """The report of an earlier ``recipes/multicsr_data.py`` run writing the triplet file ``out`` (``{"inputs":
    processed inputs, reason: count...}``; ``{"inputs": 0}`` when there is none), to resume it. An ``out`` that is
    not empty and has no report was not written by that script: :class:`OutputPathError`; a report that is not JSON
    or has no ``inputs`` count: :class:`DataError` (one line each, naming both files)."""
    if not out.is_file():
        return {"inputs": 0}
    if not report_file.is_file():
        if out.stat().st_size == 0:
            return {"inputs": 0}
        raise OutputPathError(f"--output_file {out} exists without its report {report_file}, so this script did not "
                              f"write it: give another --output_file, or delete {out} to start over.")
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{report_file}: not a valid report of {out} (not JSON: {exc}); delete both files to start "
                        f"over.") from None
    if not isinstance(report, dict) or not is_int(report.get("inputs")) or report["inputs"] < 0:
        raise DataError(f"{report_file}: not a valid report of {out} (no 'inputs' count >= 0); delete both files to "
                        f"start over.")
    return report


def write_triplets(model: nn.Module, tokenizer, sentences: Sequence[str], out: Path, report: dict,
                   config: MultiCSRConfig, chunk_size: int = 64) -> dict:
    """Generate the triplets of ``sentences`` after the first ``report["inputs"]`` (those an earlier run finished;
    see :func:`read_report`) chunk by chunk: kept rows are appended to ``out`` (emptied first when nothing is done
    yet) and the counts added to ``report``, saved whole as ``<out>.report.json`` after each chunk. Returns it."""
    report_file = Path(f"{out}.report.json")
    if report["inputs"] == 0:
        write_text(out, "")
    for start in tqdm(range(report["inputs"], len(sentences), chunk_size), desc="MultiCSR chunks"):
        rows, counts = generate_triplets(model, tokenizer, sentences[start:start + chunk_size], config)
        with out.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        for key, value in counts.items():
            report[key] = report.get(key, 0) + value
        write_text(report_file, json.dumps(report, indent=1))
    return report
