"""Other libraries' ways in to mmembed models: :mod:`mmembed.integrations.sentence_transformers` (a
sentence-transformers module that loads any folder ``Embedder.save`` wrote and embeds with ``Embedder.encode``).

Nothing in the package imports this layer (``Embedder.save`` writes the files that name it through
:mod:`mmembed.st_format`). ``import mmembed.integrations`` imports no other library; its submodules are imported on
first use (``mmembed.integrations.sentence_transformers`` needs sentence-transformers).
"""

from __future__ import annotations

from types import ModuleType


def __getattr__(name: str) -> ModuleType:  # mmembed.integrations.sentence_transformers on first use
    from .._lazy import submodule

    return submodule(__name__, name)
