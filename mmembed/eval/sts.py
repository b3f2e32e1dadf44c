"""STS evaluation with the SentEval protocol as SimCSE reports it.

A SentEval data root holds ``STS/STS1{2..6}-en-test/STS.input.<subset>.txt`` (tab-separated pairs) with
``STS.gs.<subset>.txt`` (a gold score a line; an empty line means no gold and the pair is skipped),
``STS/STSBenchmark/sts-{train,dev,test}.csv`` and ``SICK/SICK_{train,trial,test_annotated}.txt``.

Score: Spearman x 100 between the cosine similarity of the two embeddings and the gold scores; no regressor.
STS12-16 use the "all" aggregation (the subsets of a year pooled into one correlation; SentEval's ``all``, not its
``mean`` / ``wmean``, which are also recorded). STS-B and SICK-R are scored on their test split, and their dev splits
(``STSBenchmark-dev``, ``SICKRelatedness-dev``) are reported separately for model selection. The average is over the
requested test tasks (the seven by default) and is only given when all of them ran (``avg_present`` otherwise);
tasks whose files are absent are reported as missing.
Sentences are whitespace-normalised, as SentEval's word lists joined by spaces are.

Every file is checked before anything is encoded: a line that is not UTF-8, an empty sentence, a gold score that is
not a finite number (``nan``, ``inf``) or missing (except the empty lines of ``STS.gs.*``, which SentEval defines as
"no gold"), and a file or STS12-16 subset with fewer than two scored pairs or a single gold value (Spearman is
undefined there) raise :class:`STSDataError` naming the file and line (or the file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..stsio import SICK_FILES, STSB_FILES, STSDataError, check_scorable, read_sick, read_sts_benchmark
from ..stsio import gold_score as _gold
from ..stsio import sentence_pair as _pair
from ..stsio import sts_lines as _lines
from .encoding import EmbeddingCache
from .metrics import mean, spearman

#: SentEval's subsets per year (STS13 without SMT, as distributed)
STS_YEARS: dict[str, list[str]] = {
    "STS12": ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"],
    "STS13": ["FNWN", "headlines", "OnWN"],
    "STS14": ["deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"],
    "STS15": ["answers-forums", "answers-students", "belief", "headlines", "images"],
    "STS16": ["answer-answer", "headlines", "plagiarism", "postediting", "question-question"],
}
TEST_TASKS = [*STS_YEARS, "STSBenchmark", "SICKRelatedness"]


@dataclass
class STSTask:
    """Sentence pairs with gold scores; ``subsets`` maps a subset name to its slice of the pairs."""

    name: str
    split: str
    first: list[str]
    second: list[str]
    gold: np.ndarray
    files: list[Path]
    subsets: dict[str, slice] = field(default_factory=dict)


def read_sts_year(folder: Path, name: str, subsets: list[str]) -> STSTask:
    """One STS12-16 year: every subset's pairs with a gold score, in SentEval's order."""
    first: list[str] = []
    second: list[str] = []
    gold: list[float] = []
    spans, files = {}, []
    for subset in subsets:
        inputs, scores = folder / f"STS.input.{subset}.txt", folder / f"STS.gs.{subset}.txt"
        files += [inputs, scores]
        pairs, golds = _lines(inputs), _lines(scores)
        if len(pairs) != len(golds):
            raise STSDataError(f"{inputs}: {len(pairs)} pairs but {scores} has {len(golds)} lines.")
        start = len(gold)
        for number, (pair, value) in enumerate(zip(pairs, golds), start=1):
            if not value.strip():
                continue
            fields = pair.split("\t")
            if len(fields) < 2:
                raise STSDataError(f"{inputs}:{number}: expected two tab-separated sentences.")
            gold.append(_gold(value, f"{scores}:{number}"))
            a, b = _pair(fields[0], fields[1], f"{inputs}:{number}")
            first.append(a)
            second.append(b)
        spans[subset] = slice(start, len(gold))
        check_scorable(np.array(gold[start:]), f"{scores} ({name} {subset})")
    return STSTask(name, "test", first, second, np.array(gold), files, spans)


def load_senteval(root: str | Path, splits: tuple[str, ...] = ("test", "dev"),
                  tasks: list[str] | None = None) -> tuple[list[STSTask], dict[str, str]]:
    """The STS tasks present under a SentEval data root, and ``{task: reason}`` for the absent ones.

    ``tasks`` restricts to some of ``TEST_TASKS``; dev splits exist for STSBenchmark and SICKRelatedness.
    """
    root = Path(root)
    if not root.is_dir():
        raise STSDataError(f"SentEval data root {root} is not a folder (it should hold STS/ and SICK/).")
    wanted = tasks or TEST_TASKS
    unknown = [t for t in wanted if t not in TEST_TASKS]
    if unknown:
        raise STSDataError(f"unknown STS task(s) {unknown}; choose from {TEST_TASKS}.")
    found: list[STSTask] = []
    missing: dict[str, str] = {}
    for split in splits:
        if split not in ("test", "dev"):
            raise STSDataError(f"unknown split {split!r}: use test and/or dev.")
        for name in wanted:
            label = name if split == "test" else f"{name}-dev"
            if name in STS_YEARS:
                if split == "dev":
                    continue
                folder = root / "STS" / f"{name}-en-test"
                absent = [s for s in STS_YEARS[name] if not (folder / f"STS.input.{s}.txt").is_file()
                          or not (folder / f"STS.gs.{s}.txt").is_file()]
                if absent:
                    missing[label] = (f"{folder} not found" if not folder.is_dir()
                                      else f"subset(s) {absent} missing in {folder}")
                    continue
                found.append(read_sts_year(folder, name, STS_YEARS[name]))
                continue
            path = (root / "STS" / "STSBenchmark" / STSB_FILES[split] if name == "STSBenchmark"
                    else root / "SICK" / SICK_FILES[split])
            if not path.is_file():
                missing[label] = f"{path} not found"
                continue
            reader = read_sts_benchmark if name == "STSBenchmark" else read_sick
            found.append(STSTask(label, split, *reader(path), files=[path]))
    return found, missing


def score_task(task: STSTask, cosine: np.ndarray) -> dict[str, Any]:
    """Spearman x 100 of ``cosine`` against the task's gold; for STS12-16 the "all" aggregation (subsets pooled),
    with the per-subset scores and their mean / size-weighted mean recorded next to it."""
    entry: dict[str, Any] = {"score": spearman(cosine, task.gold), "metric": "spearman", "split": task.split,
                             "n": len(task.gold)}
    if task.subsets:
        per_subset = {s: spearman(cosine[span], task.gold[span]) for s, span in task.subsets.items()}
        sizes = {s: span.stop - span.start for s, span in task.subsets.items()}
        entry.update(aggregation="all", subsets=per_subset, subset_sizes=sizes,
                     mean=float(np.mean(list(per_subset.values()))),
                     wmean=float(np.average(list(per_subset.values()), weights=list(sizes.values()))))
    return entry


def evaluate_sts(embedder: Any, root: str | Path, *, splits: tuple[str, ...] = ("test", "dev"),
                 tasks: list[str] | None = None, prompt_name: str | None = None, prompt: str | None = None,
                 batch_size: int = 64, show_progress_bar: bool | None = None):
    """Score ``embedder`` on the STS tasks of a SentEval data root; returns a :class:`~mmembed.eval.report.Report`.

    Every distinct sentence is encoded once across tasks.
    """
    from .report import Report, describe_model, file_hashes

    found, missing = load_senteval(root, splits, tasks)
    if not found:
        raise STSDataError(f"no STS task files under {root}: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
    cache = EmbeddingCache(embedder, None, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size,
                           show_progress_bar=show_progress_bar)
    cache.get(list(dict.fromkeys(s for t in found for s in t.first + t.second)))
    results: dict[str, dict[str, Any]] = {}
    for task in found:
        results[task.name] = score_task(task, (cache.get(task.first) * cache.get(task.second)).sum(1))
    test_scores = [results[t]["score"] for t in (tasks or TEST_TASKS) if t in results]
    summary: dict[str, Any] = {
        "avg": mean(test_scores) if len(test_scores) == len(tasks or TEST_TASKS) else None,
        "avg_present": mean(test_scores),
        "tasks_present": f"{len(test_scores)}/{len(tasks or TEST_TASKS)}",
    }
    return Report(
        suite="sts", metric="spearman x 100", tasks=results, summary=summary, missing=missing,
        model=describe_model(embedder),
        protocol={"similarity": "cosine", "correlation": "spearman", "sts12_16_aggregation": "all",
                  "stsb_sickr_split": "test (dev reported as <task>-dev)", "regressor": None,
                  "sentences": "whitespace-normalised", "prompt_name": prompt_name, "prompt": prompt},
        data={"root": str(root), "files": file_hashes([f for t in found for f in t.files])},
    )


def spearman_of_pairs(embedder: Any, first: list[str], second: list[str], gold: np.ndarray,
                      batch_size: int = 64) -> float:
    """Spearman x 100 of cos(e(first_i), e(second_i)) against ``gold``."""
    check_scorable(np.asarray(gold, dtype=np.float64), "spearman_of_pairs")
    cache = EmbeddingCache(embedder, None, batch_size=batch_size)
    return spearman((cache.get(first) * cache.get(second)).sum(1), gold)


def sts_benchmark_spearman(embedder: Any, path: str | Path, batch_size: int = 64) -> float:
    """Spearman x 100 on one STS-B file (e.g. ``sts-dev.csv`` for model selection)."""
    return spearman_of_pairs(embedder, *read_sts_benchmark(path), batch_size=batch_size)
