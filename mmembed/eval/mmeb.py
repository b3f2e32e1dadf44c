"""MMEB (VLM2Vec) evaluation: Precision@1 of each query against its own candidate list.

Data: one file per task under a data root, in the ``TIGER-Lab/MMEB-eval`` columns ``qry_inst, qry_text,
qry_img_path, tgt_inst, tgt_text[], tgt_img_path[]`` with the gold candidate first. Accepted layouts:
``<root>/<Task>.jsonl``, ``<root>/<Task>.parquet``, or a folder ``<root>/<Task>/`` of ``*.jsonl`` / ``*.parquet``
files (a hub snapshot). Image paths are relative to ``image_root`` (default: the data root) and must stay inside it.

Protocol (VLM2Vec v1 ``eval.py``): ``qry_text`` (which holds the instruction) with ``qry_img_path`` is the query,
each ``(tgt_text, tgt_img_path)`` a candidate; Phi-3's ``<|image_1|>`` marker is removed from the text (the model's
template places the image). Every distinct query and candidate is embedded once per run and reused across queries
and tasks. Cosine scores; a query counts 1 when its gold is the unique best candidate. Unlike the reference, whose
``argmax == 0`` credits a tie to the gold stored first (a collapsed model would score 100%), ties are broken at
random, in expectation (:func:`~mmembed.eval.metrics.single_gold_metric`); a task may name another metric in the task
list (``ndcg@5`` for MMEB-V2's visual-document tasks). Per-task scores are averaged per meta-task
(classification, VQA, retrieval, grounding), IND / OOD and overall, over the tasks present; absent tasks are
reported as missing. Near-constant embeddings are flagged in the report and logged as a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed import run_on_main
from ..errors import DataError
from ..textio import iter_jsonl, resolve_image
from .encoding import EmbeddingCache
from .metrics import gold_rank_range, mean, single_gold_metric
from .resume import load_state, save_state

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<|image_1|>"
META_TASKS = ("classification", "vqa", "retrieval", "grounding")
#: mean pairwise cosine above which embeddings count as (near) constant
COLLAPSE_COSINE = 0.999


class MMEBDataError(DataError):
    """An MMEB file or row that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class MMEBTask:
    name: str
    meta_task: str
    distribution: str  # IND or OOD
    metric: str = "precision@1"  # or hit@k, ndcg@k (MMEB-V2 visual documents: ndcg@5), mrr


@dataclass
class MMEBRow:
    """One query with its candidates (gold first); sides are ``(text, image path)`` keys."""

    query: tuple[str | None, str | None]
    candidates: list[tuple[str | None, str | None]]


def load_task_list(path: str | Path | None = None) -> list[MMEBTask]:
    """Tasks from a YAML file ``{tasks: [{name, meta_task, distribution[, metric]}]}`` (metric: ``precision@1`` by
    default, or ``hit@k``, ``ndcg@k``, ``mrr``); default: the 36 MMEB v1 tasks."""
    import yaml

    text = Path(path).read_text() if path else resources.files(__package__).joinpath("mmeb_tasks.yaml").read_text()
    where = str(path or "mmeb_tasks.yaml")
    tasks = []
    for i, entry in enumerate((yaml.safe_load(text) or {}).get("tasks") or []):
        if not isinstance(entry, dict) or not {"name", "meta_task", "distribution"} <= set(entry):
            raise MMEBDataError(f"{where}: tasks[{i}] needs name, meta_task and distribution.")
        if entry["meta_task"] not in META_TASKS or entry["distribution"] not in ("IND", "OOD"):
            raise MMEBDataError(f"{where}: tasks[{i}] ({entry['name']}): meta_task must be one of {META_TASKS} and "
                                f"distribution IND or OOD.")
        metric = str(entry.get("metric", "precision@1"))
        try:
            single_gold_metric([1.0, 0.0], metric)
        except ValueError as exc:
            raise MMEBDataError(f"{where}: tasks[{i}] ({entry['name']}): {exc}") from None
        tasks.append(MMEBTask(str(entry["name"]), entry["meta_task"], entry["distribution"], metric))
    if not tasks:
        raise MMEBDataError(f"{where}: no tasks listed.")
    return tasks


def task_files(root: Path, name: str) -> list[Path]:
    """The files holding a task's rows (empty when the task is absent)."""
    for suffix in (".jsonl", ".parquet"):
        if (root / f"{name}{suffix}").is_file():
            return [root / f"{name}{suffix}"]
    folder = root / name
    if folder.is_dir():
        return sorted(folder.glob("*.jsonl")) or sorted(folder.glob("*.parquet"))
    return []


def _records(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, record in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i}", record
        return
    yield from iter_jsonl(path)


def _side(text: Any, image: Any, image_root: Path, where: str) -> tuple[str | None, str | None]:
    text = (text or "").replace(IMAGE_TOKEN, "").strip() or None
    path = resolve_image(str(image), image_root, where) if image else None
    if text is None and path is None:
        raise MMEBDataError(f"{where}: neither text nor image.")
    return text, path


def read_task(files: list[Path], image_root: Path) -> list[MMEBRow]:
    """Rows of one task; a malformed row raises :class:`MMEBDataError` with its file and line."""
    rows = []
    for path in files:
        for where, record in _records(path):
            if "qry_text" not in record or "tgt_text" not in record:
                raise MMEBDataError(f"{where}: an MMEB row needs qry_text and tgt_text (and image path columns).")
            texts, images = record["tgt_text"], record.get("tgt_img_path")
            if isinstance(texts, str):
                texts = [texts]
            images = images if isinstance(images, list) else [images] * len(texts)
            if not texts or len(texts) != len(images):
                raise MMEBDataError(f"{where}: tgt_text ({len(texts)}) and tgt_img_path ({len(images)}) must be "
                                    f"non-empty lists of equal length.")
            query = _side(record["qry_text"], record.get("qry_img_path"), image_root, f"{where} query")
            candidates = [_side(t, p, image_root, f"{where} candidate {j}") for j, (t, p) in
                          enumerate(zip(texts, images))]
            rows.append(MMEBRow(query, candidates))
    return rows


def _to_input(key: tuple[str | None, str | None]) -> dict:
    text, image = key
    return {k: v for k, v in (("text", text), ("image", image)) if v is not None}


def _load_state(path: str | Path | None, key: str) -> dict[str, Any]:
    """Finished tasks of an earlier run with the same key (model, weights, settings), else an empty state."""
    state, stale = load_state(path, key)
    if state is not None:
        logger.info("resuming from %s: %d finished task(s)", path, len(state["tasks"]))
        return state
    if stale:
        logger.info("%s belongs to another model or settings: starting over", path)
    return {"key": key, "tasks": {}}


def _select(task_list: list[MMEBTask], tasks: list[str] | None, tasks_file: Path | str | None) -> list[MMEBTask]:
    """The tasks of ``task_list`` named in ``tasks`` (all of them when None); an unknown name raises."""
    if not tasks:
        return task_list
    unknown = sorted(set(tasks) - {t.name for t in task_list})
    if unknown:
        raise MMEBDataError(f"task(s) {unknown} are not in the task list ({tasks_file or 'MMEB v1'}).")
    return [t for t in task_list if t.name in tasks]


def _sample(rows: list[MMEBRow], task: MMEBTask, max_queries: int | None, seed: int) -> list[MMEBRow]:
    """A seeded sample of ``max_queries`` rows, from a per-task stream: independent of the task list."""
    if max_queries is None or len(rows) <= max_queries:
        return rows
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    return [rows[i] for i in sorted(rng.choice(len(rows), max_queries, replace=False))]


def _score_task(task: MMEBTask, rows: list[MMEBRow], n_total: int, queries: EmbeddingCache,
                candidates: EmbeddingCache) -> tuple[dict[str, Any], str | None]:
    """A task's report entry (score, chance level, ties, spread of the embeddings) and its collapse flag (None when
    the embeddings are not (near) constant)."""
    from .probes import average_cosine

    query_vectors = queries.get([r.query for r in rows])
    keys = list(dict.fromkeys(c for r in rows for c in r.candidates))
    candidate_vectors = dict(zip(keys, candidates.get(keys)))
    credits, tied = [], 0
    for row, q in zip(rows, query_vectors):
        scores = np.stack([candidate_vectors[c] for c in row.candidates]) @ q
        first, last = gold_rank_range(scores, gold=0)
        tied += int(first == 1 and last > 1)  # the gold shares the top with others
        credits.append(single_gold_metric(scores, task.metric, gold=0))
    spread = average_cosine(np.concatenate([query_vectors, np.stack(list(candidate_vectors.values()))]),
                            n_pairs=None)  # exact
    entry: dict[str, Any] = {
        "score": 100 * float(np.mean(credits)), "metric": task.metric, "meta_task": task.meta_task,
        "distribution": task.distribution, "n": len(rows), "n_total": n_total,
        "n_candidates": float(np.mean([len(r.candidates) for r in rows])),
        "chance": 100 * float(np.mean([single_gold_metric(np.zeros(len(r.candidates)), task.metric)
                                       for r in rows])),
        "tied_queries": tied, "mean_pairwise_cosine": spread,
    }
    if not (spread > COLLAPSE_COSINE or tied > len(rows) / 2):
        return entry, None
    entry["collapsed"] = True
    flag = (f"{task.name}: embeddings are (near) constant (mean pairwise cosine {spread:.5f}, "
            f"{tied}/{len(rows)} queries with the gold tied at the top); its score "
            f"{entry['score']:.2f} is at chance level {entry['chance']:.2f}, not a real result.")
    logger.warning(flag)
    return entry, flag


def _summary(task_list: list[MMEBTask], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted averages per meta-task, IND / OOD and overall (only when every task ran) over the tasks present."""

    def avg(selected: list[MMEBTask]) -> float | None:
        return mean([results[t.name]["score"] for t in selected if t.name in results])

    summary: dict[str, Any] = {f"{m}": avg([t for t in task_list if t.meta_task == m]) for m in META_TASKS}
    summary.update({"IND": avg([t for t in task_list if t.distribution == "IND"]),
                    "OOD": avg([t for t in task_list if t.distribution == "OOD"]),
                    "overall": avg(task_list) if len(results) == len(task_list) else None,
                    "overall_present": avg(task_list), "tasks_present": f"{len(results)}/{len(task_list)}"})
    return summary


def _protocol(max_queries: int | None, queries: EmbeddingCache, candidates: EmbeddingCache) -> dict[str, Any]:
    return {"query": "qry_text + qry_img_path", "candidate": "tgt_text[i] + tgt_img_path[i]",
            "image_token_removed": IMAGE_TOKEN, "similarity": "cosine", "pool": "per-query candidate list",
            "tie_breaking": "random (expected credit 1/t among t tied best)", "max_queries": max_queries,
            "encoded_queries": len(queries), "encoded_candidates": len(candidates),
            "prompts": "the model's 'query' / 'document' prompts when it has them (VLM2Vec adds none: the "
                       "instruction is in qry_text)",
            "averages": "unweighted; per meta-task and IND / OOD over the tasks present, 'overall' only "
                        "when every task ran ('overall_present' otherwise)"}


def evaluate_mmeb(embedder: Any, data_root: str | Path, *, tasks_file: str | Path | None = None,
                  tasks: list[str] | None = None, image_root: str | Path | None = None,
                  max_queries: int | None = None, seed: int = 0, batch_size: int = 16,
                  resume_file: str | Path | None = None, show_progress_bar: bool | None = None):
    """Score ``embedder`` on the MMEB tasks found under ``data_root``; returns a :class:`~mmembed.eval.report.Report`.

    The task list is ``tasks_file``, else ``<data_root>/tasks.yaml`` when present, else the 36 MMEB v1 tasks.
    ``tasks`` restricts to some task names; ``max_queries`` evaluates a seeded sample of each task's queries (the
    sample size is recorded). With ``resume_file``, each finished task is saved there, and a rerun with the same
    model, weights, settings and task files reuses those results instead of encoding again.
    """
    from tqdm.auto import tqdm

    from .report import Report, describe_model, file_hashes

    root = Path(data_root)
    if not root.is_dir():
        raise MMEBDataError(f"MMEB data root {root} is not a folder.")
    image_root = Path(image_root) if image_root is not None else root
    if tasks_file is None and (root / "tasks.yaml").is_file():
        tasks_file = root / "tasks.yaml"
    task_list = _select(load_task_list(tasks_file), tasks, tasks_file)
    queries = EmbeddingCache(embedder, "query", _to_input, batch_size=batch_size, show_progress_bar=show_progress_bar)
    candidates = EmbeddingCache(embedder, "document", _to_input, batch_size=batch_size,
                                show_progress_bar=show_progress_bar)
    model_info = describe_model(embedder)
    run_key = hashlib.sha256(json.dumps([model_info, str(image_root), max_queries, seed], sort_keys=True,
                                        default=str).encode()).hexdigest()
    state = run_on_main(lambda: _load_state(resume_file, run_key))  # on several processes: the main one's files
    results: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    flags: list[str] = []
    data_files: dict[str, str] = {}
    for task in tqdm(task_list, desc="MMEB tasks", unit="task", disable=show_progress_bar is False):
        files = task_files(root, task.name)
        if not files:
            missing[task.name] = f"no {task.name}.jsonl / .parquet / folder under {root}"
            continue
        hashes = file_hashes(files)
        data_files.update(hashes)
        done = state["tasks"].get(task.name)
        if done is not None and done["files"] == hashes:
            results[task.name] = done["entry"]
            flags += [done["flag"]] if done.get("flag") else []
            continue
        rows = read_task(files, image_root)
        if not rows:
            missing[task.name] = f"{files[0]} has no rows"
            continue
        results[task.name], flag = _score_task(task, _sample(rows, task, max_queries, seed), len(rows), queries,
                                               candidates)
        flags += [flag] if flag else []
        if resume_file is not None:
            state["tasks"][task.name] = {"files": hashes, "entry": results[task.name], "flag": flag}
            run_on_main(lambda: save_state(resume_file, state))
    if not results:
        present = sorted(p.name for p in root.iterdir())[:8]
        raise MMEBDataError(f"none of the {len(task_list)} tasks of {tasks_file or 'MMEB v1'} is under {root} (a task "
                            f"is <name>.jsonl, <name>.parquet or a folder <name>/, e.g. {task_list[0].name}.jsonl); "
                            f"the folder holds {present}. Pass --tasks-file for another task list.")
    return Report(
        suite="mmeb", metric="precision@1 x 100 (or the task's metric)", tasks=results,
        summary=_summary(task_list, results), missing=missing, flags=flags, model=model_info,
        protocol=_protocol(max_queries, queries, candidates),
        data={"root": str(root), "image_root": str(image_root), "tasks_file": str(tasks_file or "MMEB v1 (36 tasks)"),
              "files": data_files},
        seeds={"query_sample": seed},
    )
