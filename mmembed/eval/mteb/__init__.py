"""MTEB: run an :class:`~mmembed.Embedder` on mteb (v2) tasks, from the registry or from local files.

>>> from mmembed.eval import mteb as mm_mteb
>>> scores = mm_mteb.evaluate(embedder, ["STSBenchmark", "data/my_beir_folder", "data/pairs.tsv"])
>>> scores["STSBenchmark"]["main_score"]

- :class:`MTEBEncoder` (:mod:`.encoder`) wraps an Embedder in mteb's encoder protocol (``encode`` of a DataLoader of
  batches, ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``). Prompts come from ``embedder.prompts`` by
  mteb's priority: ``"{task}-{query|document}"``, task name, ``"{TaskType}-{query|document}"``, task type,
  ``"query"`` / ``"document"``; none matching means no prompt.
- :func:`retrieval_task_from_beir` and :func:`sts_task_from_file` (:mod:`.tasks`) make offline tasks from files.
- :func:`evaluate` (:mod:`.run`) resolves task names and paths, runs ``mteb.evaluate`` and returns plain scores;
  :func:`mteb_report` gives them as a :class:`~mmembed.eval.report.Report`.

``mteb`` is imported inside the functions, so ``import mmembed`` stays light.
"""

from __future__ import annotations

from typing import Any

from .encoder import as_encoder, build_model_meta, model_name, model_revision
from .errors import TaskDataUnavailableError, TaskFileError, UnknownTaskError
from .run import close_task_names, evaluate, mteb_report, resolve_tasks
from .tasks import local_task, retrieval_task_from_beir, sts_task_from_file

__all__ = [  # MTEBEncoder is created on first access (module __getattr__), so mteb loads lazily
    "MTEBEncoder",
    "TaskDataUnavailableError",
    "TaskFileError",
    "UnknownTaskError",
    "as_encoder",
    "build_model_meta",
    "close_task_names",
    "evaluate",
    "local_task",
    "model_name",
    "model_revision",
    "mteb_report",
    "resolve_tasks",
    "retrieval_task_from_beir",
    "sts_task_from_file",
]


def __getattr__(attr: str) -> Any:  # MTEBEncoder is created on first access (it subclasses mteb's AbsEncoder)
    if attr == "MTEBEncoder":
        from . import encoder

        cls = encoder.MTEBEncoder
        globals()["MTEBEncoder"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
