"""Pair classification (MTEB's PairClassification protocol) on MSRP-style data: is the second sentence a paraphrase
of the first?

Score of a pair: the cosine similarity of the two sentences' embeddings. Main metric: average precision x 100 of
those scores against the 0/1 labels (MTEB's "cosine AP", as ``sklearn.metrics.average_precision_score`` computes
it). Also recorded: the accuracy and the F1 (with its precision and recall) at their best threshold.

Ties: pairs whose cosines are equal (at ``decimals`` = 6, so float noise of ~1e-7 never separates them) enter the
ranking together, as one threshold step, so the result never depends on the file's order; a best-accuracy or
best-F1 threshold never splits tied pairs (as mteb 2's ``_find_best_acc_and_threshold``, which compares exactly).

File (MSRP, ``msr-para-{train,val,test}.tsv``): tab-separated with the header
``Quality, #1 ID, #2 ID, #1 String, #2 String``; ``Quality`` is 1 for a paraphrase, else 0. Sentences contain quote
characters, so lines are split on tabs (no CSV quoting); the text is used as it is in the file. A line that is not
UTF-8, has another number of fields, a Quality other than 0 / 1 or an empty sentence raises :class:`PairDataError`
naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..textio import text_lines
from .encoding import EmbeddingCache

MSRP_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


class PairDataError(DataError):
    """A pair-classification file that cannot be used; the message names the file and line."""


def read_msrp(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(first sentences, second sentences, labels)`` from an MSRP TSV (labels an int array of 0 / 1)."""
    path = Path(path)
    if not path.is_file():
        raise PairDataError(f"MSRP file {path} not found (tab-separated, header {', '.join(MSRP_HEADER)}).")
    lines = [line for _, line in text_lines(path, PairDataError)]
    if not lines or [f.strip() for f in lines[0].split("\t")] != MSRP_HEADER:
        found = lines[0][:80] if lines else "an empty file"
        raise PairDataError(f"{path}:1: the header must be the tab-separated {', '.join(MSRP_HEADER)} "
                            f"(found {found!r}); add it, or check that the file is MSRP's TSV.")
    first: list[str] = []
    second: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 5:
            raise PairDataError(f"{path}:{number}: {len(fields)} tab-separated fields, expected 5 (Quality, #1 ID, "
                                f"#2 ID, #1 String, #2 String); a sentence must not contain a tab or a line break.")
        if fields[0].strip() not in ("0", "1"):
            raise PairDataError(f"{path}:{number}: Quality {fields[0]!r} must be 0 or 1.")
        if not fields[3].strip() or not fields[4].strip():
            raise PairDataError(f"{path}:{number}: empty sentence; remove the line or fill in both sentences.")
        labels.append(int(fields[0]))
        first.append(fields[3])
        second.append(fields[4])
    if not labels:
        raise PairDataError(f"{path}: no pairs after the header.")
    return first, second, np.array(labels, dtype=np.int64)


def _threshold_steps(scores: np.ndarray, labels: np.ndarray, decimals: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (rounded) scores in decreasing order, with the cumulative true and false positives of the
    classifier ``score >= that value``: one step per distinct score, tied pairs always on the same side."""
    scores = np.round(np.asarray(scores, dtype=np.float64), decimals)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal non-empty 1-d shapes.")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1.")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(labels)[last_of_group]
    false_positives = (last_of_group + 1) - true_positives
    return scores[last_of_group], true_positives, false_positives


def binary_average_precision(scores: np.ndarray, labels: np.ndarray, decimals: int = 6) -> float:
    """AP = sum over thresholds of (recall gain) x precision, one threshold per distinct score (tied scores form
    one step), as ``sklearn.metrics.average_precision_score``; 0 when there is no positive label."""
    _, tp, fp = _threshold_steps(scores, labels, decimals)
    positives = tp[-1]
    if positives == 0:
        return 0.0
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_gain * tp / (tp + fp)))


def best_threshold_metrics(scores: np.ndarray, labels: np.ndarray, decimals: int = 6) -> dict[str, float | None]:
    """Accuracy and F1 (with its precision and recall) at their best thresholds, as MTEB's PairClassification
    finds them: a pair is predicted a paraphrase when ``score > t``, ``t`` the midpoint between two consecutive
    distinct scores (never inside a group of tied scores); among equally good thresholds the highest wins.
    All ``None`` when every score is tied (no threshold separates the pairs; MTEB reports 0 there); the F1
    threshold is ``None`` when no threshold finds a positive (F1 0).
    """
    values, tp, fp = _threshold_steps(scores, labels, decimals)
    n, positives = int(tp[-1] + fp[-1]), int(tp[-1])
    if len(values) < 2:
        return dict.fromkeys(("accuracy", "accuracy_threshold", "f1", "precision", "recall", "f1_threshold"))
    tp, fp = tp[:-1], fp[:-1]  # the cut after each group but the last ("all positive" is not a threshold in MTEB)
    thresholds = (values[:-1] + values[1:]) / 2
    accuracy = (tp + (n - positives - fp)) / n
    precision = tp / (tp + fp)
    recall = tp / positives if positives else np.zeros(len(tp))
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(tp)), where=tp > 0)
    best_acc, best_f1 = int(np.argmax(accuracy)), int(np.argmax(f1))
    return {"accuracy": float(accuracy[best_acc]), "accuracy_threshold": float(thresholds[best_acc]),
            "f1": float(f1[best_f1]), "precision": float(precision[best_f1]), "recall": float(recall[best_f1]),
            "f1_threshold": float(thresholds[best_f1]) if f1[best_f1] > 0 else None}


def pair_classification_scores(scores: np.ndarray, labels: np.ndarray, decimals: int = 6) -> dict[str, Any]:
    """``{"ap", "accuracy", "f1", "precision", "recall"}`` x 100 (and the two thresholds) of similarity scores."""
    best = best_threshold_metrics(scores, labels, decimals)
    return {"ap": 100 * binary_average_precision(scores, labels, decimals),
            **{k: 100 * v if k in ("accuracy", "f1", "precision", "recall") and v is not None else v
               for k, v in best.items()}}


def evaluate_pair_classification(embedder: Any, path: str | Path, *, batch_size: int = 32,
                                 show_progress_bar: bool | None = None, name: str | None = None):
    """Cosine AP x 100 of ``embedder`` on an MSRP-style TSV (every distinct sentence encoded once); returns a
    :class:`~mmembed.eval.report.Report` with accuracy and F1 at the best thresholds next to it. A file whose pairs
    all have one label is refused before encoding (AP would not depend on the model)."""
    from .report import Report, describe_model, file_hashes

    first, second, labels = read_msrp(path)
    if labels.min() == labels.max():
        raise PairDataError(f"{path}: every pair has Quality {labels[0]}; average precision needs paraphrases (1) and "
                            f"non-paraphrases (0) to rank (with one kind only any model scores {100 * labels[0]}).")
    cache = EmbeddingCache(embedder, None, batch_size=batch_size, show_progress_bar=show_progress_bar)
    cache.get(list(dict.fromkeys(first + second)))
    cosine = (cache.get(first) * cache.get(second)).sum(1)
    scores = pair_classification_scores(cosine, labels)
    task = name or Path(path).stem
    return Report(
        suite="pairs", metric="cosine AP x 100",
        tasks={task: {"score": scores["ap"], "metric": "cosine_ap", "n": len(labels),
                      "positives": int(labels.sum()), **scores}},
        model=describe_model(embedder),
        protocol={"similarity": "cosine", "main": "average precision (sklearn's, one step per distinct score)",
                  "accuracy_f1": "at the best threshold between two distinct scores (MTEB's search)",
                  "ties": "scores equal at 6 decimals share a threshold", "sentences": "as in the file"},
        data={"root": str(path), "files": file_hashes([path])},
    )
