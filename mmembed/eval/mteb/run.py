"""Running: task names, benchmark names and paths resolved to mteb tasks, ``mteb.evaluate`` run on them, and its
results returned as plain scores (:func:`evaluate`) or as a :class:`~mmembed.eval.report.Report`
(:func:`mteb_report`)."""

from __future__ import annotations

import copy
import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import MMEmbedError
from .encoder import as_encoder
from .errors import TaskDataUnavailableError, TaskFileError, UnknownTaskError
from .tasks import local_task

if TYPE_CHECKING:
    from mteb.abstasks.abstask import AbsTask

logger = logging.getLogger(__name__)


def _looks_like_path(entry: str) -> bool:
    return "/" in entry or os.sep in entry or entry.startswith(("~", ".")) or \
        Path(entry).suffix.lower() in (".jsonl", ".json", ".tsv", ".txt", ".csv")


def _registry_names() -> list[str]:
    import importlib

    module = importlib.import_module("mteb.get_tasks")
    registry = getattr(module, "_TASKS_REGISTRY", None)
    if registry is not None:
        return list(registry)
    import mteb

    return [t.metadata.name for t in mteb.get_tasks(exclude_superseded=False)]


def close_task_names(name: str, n: int = 5) -> list[str]:
    """Registry task names close to ``name`` (case-insensitive), best first."""
    names = _registry_names()
    by_lower: dict[str, str] = {}
    for candidate in names:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    extra = [c for c in names if name.lower() in c.lower() and c.lower() not in matches] if len(name) >= 3 else []
    return list(dict.fromkeys([by_lower[m] for m in matches] + sorted(extra, key=len)))[:n]


def _is_network_error(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        module = type(exc).__module__ or ""
        if isinstance(exc, (OSError, TimeoutError)) or module.split(".")[0] in (
                "requests", "urllib3", "httpx", "httpcore", "huggingface_hub", "aiohttp", "fsspec") or \
                type(exc).__name__ in ("DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _guard_data_loading(task: AbsTask) -> AbsTask:
    """Make ``task.load_data`` raise :class:`TaskDataUnavailableError` naming the task instead of a hub error."""
    original = task.load_data

    def load_data(*args: Any, **kwargs: Any) -> None:
        try:
            original(*args, **kwargs)
        except MMEmbedError:
            raise
        except Exception as exc:
            name, dataset = task.metadata.name, task.metadata.dataset or {}
            source = f"Hugging Face dataset '{dataset.get('path')}' (revision {dataset.get('revision')})"
            if _is_network_error(exc):
                offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
                    os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on")
                raise TaskDataUnavailableError(
                    f"mteb task '{name}': its data ({source}) is not available offline: it is not in the local "
                    f"Hugging Face cache{' and HF_HUB_OFFLINE is set' if offline else ' and the hub cannot be reached'}"
                    f". Run once with network access to cache it, or evaluate a local task (a BEIR folder or an STS "
                    f"file). Cause: {type(exc).__name__}: {exc}") from exc
            raise TaskDataUnavailableError(f"mteb task '{name}': loading its data ({source}) failed: "
                                           f"{type(exc).__name__}: {exc}") from exc

    task.load_data = load_data  # type: ignore[method-assign]
    return task


def resolve_tasks(tasks: Any) -> list[AbsTask]:
    """Task objects from names (mteb's registry), paths (local tasks) and ``AbsTask`` instances."""
    import mteb
    from mteb.abstasks.abstask import AbsTask

    if isinstance(tasks, (str, os.PathLike, AbsTask)):
        tasks = [tasks]
    resolved: list[AbsTask] = []
    for entry in tasks:
        if isinstance(entry, AbsTask):
            resolved.append(entry)
            continue
        if not isinstance(entry, (str, os.PathLike)):
            raise TypeError(f"a task is a name, a path or an mteb AbsTask, got {type(entry).__name__}.")
        text = os.fspath(entry)
        if Path(text).expanduser().exists():
            resolved.append(local_task(text))
            continue
        if isinstance(entry, os.PathLike) or (_looks_like_path(text) and text not in _registry_names()):
            raise TaskFileError(f"{text}: no such file or folder (a local task is a BEIR folder or an STS file).")
        try:
            found = list(mteb.get_tasks(tasks=[text]))
        except KeyError:
            try:  # a benchmark name, e.g. "MTEB(eng, v2)": its tasks (copied: the benchmark object is shared)
                found = [copy.copy(task) for task in mteb.get_benchmark(text).tasks]
            except KeyError:
                close = close_task_names(text)
                hint = f" Close matches: {', '.join(close)}." if close else " No similar task names."
                raise UnknownTaskError(f"unknown mteb task '{text}' (not a task or benchmark of mteb's registry, "
                                       f"not an existing path).{hint}") from None
        resolved.extend(_guard_data_loading(task) for task in found)
    names = [t.metadata.name for t in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several tasks are named {duplicates}; give local tasks distinct names.")
    return resolved


def evaluate(embedder: Any, tasks: Any, *, output_folder: str | Path | None = None, batch_size: int = 32,
             overwrite: bool = True, name: str | None = None, show_progress_bar: bool = False) -> dict[str, dict]:
    """Run mteb tasks on an embedder.

    Args:
        embedder: an :class:`~mmembed.Embedder` (or an :class:`MTEBEncoder`).
        tasks: mteb task or benchmark names (``"STSBenchmark"``, ``"MTEB(eng, v2)"``), paths of local tasks (a BEIR folder with ``corpus.jsonl`` ->
            retrieval, a file -> STS) or mteb ``AbsTask`` objects.
        output_folder: where mteb writes its result files (``<output_folder>/results/<model>/<revision>/<task>.json``);
            None writes nothing. On several processes (:func:`~mmembed.distributed.sharded_encoding`) only the main
            one writes them, and each encoding is split among the processes.
        batch_size: the encode batch size (mteb's ``encode_kwargs``).
        overwrite: rerun tasks whose results are already in ``output_folder`` (False: reuse them).
        name: the model name in the results (default: from the model's path).

    Returns:
        ``{task_name: {"main_score": float, "metric": str, "scores": {split: {metric: value, ...}}}}``; the scores
        are those of the task's first subset, ``main_score`` is mteb's (averaged over splits and subsets).

    Raises:
        UnknownTaskError: a name is neither a registry task nor an existing path (the message lists close names).
        TaskDataUnavailableError: a registry task's data cannot be loaded (e.g. offline and not cached).
        TaskFileError: a local task file is malformed.
    """
    import datasets
    import mteb

    resolved = resolve_tasks(tasks)
    encoder = as_encoder(embedder, name=name, batch_size=batch_size)
    unused = encoder.unused_prompt_keys(t.metadata.name for t in resolved)
    if unused:
        logger.info("prompts %s name no mteb task, task type or query/document: mteb never uses them.", unused)
    cache = _result_cache(output_folder, overwrite)
    bars = datasets.is_progress_bar_enabled()
    if not show_progress_bar:
        datasets.disable_progress_bars()  # mteb's dataset.map calls
    try:
        result = mteb.evaluate(encoder, resolved, cache=cache,
                               overwrite_strategy="always" if overwrite else "only-missing",
                               encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
                               show_progress_bar=show_progress_bar)
    finally:
        if bars:
            datasets.enable_progress_bars()
    metrics = {t.metadata.name: t.metadata.main_score for t in resolved}
    out: dict[str, dict] = {}
    for task_result in result.task_results:
        scores = {split: _plain(subsets[0]) for split, subsets in task_result.scores.items() if subsets}
        out[task_result.task_name] = {"main_score": float(task_result.get_score()),
                                      "metric": metrics.get(task_result.task_name, "main_score"), "scores": scores}
    return out


def _result_cache(output_folder: str | Path | None, overwrite: bool) -> Any:
    """mteb's result cache in ``output_folder``: None without a folder, and on the processes other than the main one
    of a sharded run (which must recompute every task, so that all processes run the same encodings)."""
    import mteb

    from ...distributed import encoding_processes
    from ...errors import ConfigError

    procs = encoding_processes()
    if procs is not None and not overwrite:
        raise ConfigError("overwrite=False (reuse mteb's saved results) needs one process: on several, every "
                          "process must run every task. Pass overwrite=True or run on one process.")
    if output_folder is None or (procs is not None and not procs.main):
        return None
    return mteb.ResultCache(str(Path(output_folder).expanduser()))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def mteb_report(embedder: Any, tasks: Any, *, output_folder: str | Path | None = None, batch_size: int = 32,
                name: str | None = None, show_progress_bar: bool = False):
    """:func:`evaluate` as a :class:`~mmembed.eval.report.Report` (main scores x 100; NaN scores become None);
    mteb's own result files go to ``output_folder``."""
    from ..report import Report, describe_model, file_hashes

    tasks = [tasks] if isinstance(tasks, (str, Path)) else list(tasks)
    results = evaluate(embedder, tasks, output_folder=output_folder, batch_size=batch_size, name=name,
                       show_progress_bar=show_progress_bar)
    local = [Path(t) for t in tasks if isinstance(t, (str, Path)) and _looks_like_path(str(t)) and Path(t).exists()]
    files = [p for t in local for p in ([t] if t.is_file() else sorted(t.rglob("*")) if t.is_dir() else [])
             if p.is_file()]
    entries = {task: {"score": _finite(100 * r["main_score"]), "metric": r["metric"], "splits": _finite(r["scores"])}
               for task, r in results.items()}
    scores = [e["score"] for e in entries.values() if e["score"] is not None]
    encoder = as_encoder(embedder, name=name, batch_size=batch_size)
    return Report(
        suite="mteb", metric="mteb main score x 100", tasks=entries,
        summary={"avg": float(np.mean(scores)) if len(scores) == len(entries) and scores else None},
        model={**describe_model(embedder), "mteb_name": encoder.mteb_model_meta.name,
               "mteb_revision": encoder.mteb_model_meta.revision},
        protocol={"runner": "mteb.evaluate", "prompts": "embedder.prompts by mteb's priority rules",
                  "mteb_results": str(output_folder) if output_folder is not None else None},
        data={"tasks": [str(t) for t in tasks], "files": file_hashes(files)},
    )


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
