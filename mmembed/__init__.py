"""mmembed: turn (multimodal) LLMs into embedding models.

>>> import mmembed
>>> vectors = mmembed.encode(["A man is playing a guitar.", "A person plays an instrument."])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .embedder import Embedder
    from .inputs import PromptTemplate


def __getattr__(name: str) -> Any:  # lazy: `import mmembed` stays cheap, submodules load on first use
    if name == "Embedder":
        from .embedder import Embedder

        return Embedder
    if name == "PromptTemplate":
        from .inputs import PromptTemplate

        return PromptTemplate
    from ._lazy import submodule

    return submodule(__name__, name)  # mmembed.eval, mmembed.defaults, mmembed.rationale ... on first use


def load(name_or_path: str | None = None, adapter: str | None = None, **options: Any) -> Embedder:
    """Load an embedding model: a saved mmembed / sentence-transformers folder, any HF model folder or hub id, or a
    ``.gguf`` file; ``None`` gives the embedded default model. See :meth:`Embedder.load` for ``options``."""
    from .embedder import Embedder

    if name_or_path is None:
        from .defaults import load_default

        return load_default(adapter=adapter, **options)
    return Embedder.load(name_or_path, adapter=adapter, **options)


def encode(inputs: Any, **kwargs: Any) -> Any:
    """Encode with the embedded default model (loaded once per process). See :meth:`Embedder.encode`."""
    from .defaults import default_embedder

    return default_embedder().encode(inputs, **kwargs)


__all__ = ["Embedder", "PromptTemplate", "__version__", "encode", "load"]
