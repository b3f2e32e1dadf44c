"""Reading scored sentence-pair files (STS-B, SICK relatedness): the low readers evaluation (:mod:`mmembed.eval.sts`)
and training (the ``stsb`` / ``sick_relatedness`` formats of :mod:`mmembed.data.readers`) both use, so neither
imports the other.

Sentences are whitespace-normalised (as SentEval's word lists joined by spaces are). A line that is not UTF-8, an
empty sentence, a gold score that is not a finite number or missing, and a file with fewer than two scored pairs
or a single gold value (Spearman is undefined there) raise :class:`STSDataError` naming the file and line (or the
file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import DataError
from .textio import sick_lines, text_lines

__all__ = ["SICK_FILES", "STSB_FILES", "STSDataError", "check_scorable", "gold_score", "read_sick",
           "read_sts_benchmark", "sentence_pair", "sts_lines"]

STSB_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
SICK_FILES = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}


class STSDataError(DataError):
    """An STS file that cannot be read; the message names the file and line."""


def normalise(sentence: str) -> str:
    """The sentence with its runs of whitespace made single spaces, stripped."""
    return " ".join(sentence.split())


def sts_lines(path: Path) -> list[str]:
    """Every line of a UTF-8 text file (an :class:`STSDataError` naming the file and line otherwise)."""
    return [line for _, line in text_lines(path, STSDataError)]


def sentence_pair(first: str, second: str, where: str) -> tuple[str, str]:
    """The two whitespace-normalised sentences of a pair; an empty one is an error."""
    first, second = normalise(first), normalise(second)
    if not first or not second:
        raise STSDataError(f"{where}: empty sentence; remove the line or fill in both sentences.")
    return first, second


def gold_score(value: str, where: str, name: str = "gold score") -> float:
    """A gold score: a finite number."""
    try:
        number = float(value)
    except ValueError:
        hint = "missing" if not value.strip() else f"{value!r} is not a number"
        raise STSDataError(f"{where}: {name} {hint}; fix the line or remove the pair.") from None
    if not math.isfinite(number):
        raise STSDataError(f"{where}: {name} {value!r} is not a finite number; fix the line or remove the pair.")
    return number


def check_scorable(gold: np.ndarray, where: str) -> None:
    """Refuse gold scores Spearman cannot be computed on: fewer than two, or all equal."""
    if len(gold) < 2:
        raise STSDataError(f"{where}: {len(gold)} pair(s) with a gold score; Spearman needs at least 2.")
    if np.ptp(gold) == 0:
        raise STSDataError(f"{where}: every gold score is {gold[0]:g}; Spearman needs at least two different ones.")


def read_sts_benchmark(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """STS-B in the SentEval layout: tab-separated ``genre, file, year, id, score, sentence1, sentence2``."""
    first, second, scores = [], [], []
    for number, line in enumerate(sts_lines(Path(path)), start=1):
        fields = line.split("\t")
        if len(fields) < 7:
            raise STSDataError(f"{path}:{number}: {len(fields)} fields, expected at least 7.")
        scores.append(gold_score(fields[4], f"{path}:{number}", "score"))
        a, b = sentence_pair(fields[5], fields[6], f"{path}:{number}")
        first.append(a)
        second.append(b)
    check_scorable(np.array(scores), str(path))
    return first, second, np.array(scores)


def read_sick(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """SICK relatedness: a header naming ``sentence_A``, ``sentence_B``, ``relatedness_score`` (tab-separated, as
    ``pair_ID, sentence_A, sentence_B, relatedness_score, entailment_judgment``), then one pair a line
    (:func:`~mmembed.textio.sick_lines`)."""
    first, second, scores = [], [], []
    for where, (a, b, score) in sick_lines(path, ("sentence_A", "sentence_B", "relatedness_score"), STSDataError):
        scores.append(gold_score(score, where, "relatedness"))
        pair = sentence_pair(a, b, where)
        first.append(pair[0])
        second.append(pair[1])
    check_scorable(np.array(scores), str(path))
    return first, second, np.array(scores)
