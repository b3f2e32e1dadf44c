"""Sharded embedding indexes of a corpus: :func:`build` (``mmembed index build``: resumable, under ``accelerate
launch`` / ``torchrun`` on any number of processes) and :class:`Index` (``mmembed index search``: faiss, or an exact
blocked top-k without it).

>>> from mmembed.index import Index, build
>>> build("corpus.jsonl", "my-index", "./my-model")
>>> ids, scores = Index.load("my-index").search(["a query"], k=10)

Modules: :mod:`~mmembed.index.corpus` (reading records), :mod:`~mmembed.index.manifest` (what made the vectors, the
rerun check), :mod:`~mmembed.index.builder`, :mod:`~mmembed.index.search`, :mod:`~mmembed.index.faiss_index`,
:mod:`~mmembed.index.cli`; the processes of a distributed build are those of :mod:`mmembed.distributed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .builder import BuildResult, build
    from .search import Index


def __getattr__(name: str) -> Any:  # lazy: the command line imports mmembed.index.cli without torch
    if name in ("build", "BuildResult"):
        from . import builder

        return getattr(builder, name)
    if name == "Index":
        from .search import Index

        return Index
    from .._lazy import submodule

    return submodule(__name__, name)


__all__ = ["BuildResult", "Index", "build"]
