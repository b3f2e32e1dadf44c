"""An index folder's ``manifest.json``: what made its vectors (model fingerprint and settings, template, pooler,
document prompt, dimension, dtype, corpus hash) and its shard ranges; the check that a rerun may add shards to it.

The manifest is written (atomically) before any shard, and never changes afterwards: a shard ``shard-NNNNN`` is
finished when its vectors (``shard-NNNNN.npy``) and ids (``shard-NNNNN.ids.json``) are both there, each written under
a temporary name and renamed when complete (ids first). A rerun whose settings differ in anything that changes
vectors is refused by :func:`check_compatible` with one line naming the difference and the fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, RunStateError
from ..eval.search import NpyFile
from ..files import write_text

MANIFEST = "manifest.json"
FORMAT = "mmembed-index"
VERSION = 1
#: the storage dtypes of the vectors
DTYPES = ("float16", "float32")

#: what must match for a rerun to add shards: (keys into the manifest, what it is, the option that sets it)
CHECKS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("version",), "index format version", "a current mmembed"),
    (("corpus", "sha256"), "another corpus (its SHA-256 differs)", "the same corpus file (--corpus / corpus=)"),
    (("corpus", "image_root"), "another image root", "the same --image-root / image_root="),
    (("model", "config"), "other model settings", "the same model and options (template, pooler, --backend ...)"),
    (("model", "dtype"), "another model dtype", "the same --dtype / model_dtype="),
    (("model", "fingerprint"), "another model (its weights fingerprint differs)",
     "the same model (--model, --adapter, --quantize / model=, adapter=, quantize=)"),
    (("dimension",), "another dimension", "the same model"),
    (("prompt", "text"), "another document prompt", "the same --prompt-name / --prompt"),
    (("dtype",), "another vector dtype", "the same --vector-dtype / dtype="),
    (("shard_size",), "another shard size", "the same --shard-size / shard_size="),
)


def model_fingerprint(embedder: Any) -> str:
    """A 32-hex-digit hash of the model's weights (names, shapes, dtypes and bytes; quantized tensors by their inner
    tensors), its tokenizer size and its image processor's settings: one pass over the weights, the same on every
    device and process count."""
    digest = hashlib.blake2b(digest_size=16)
    backbone = embedder.backbone
    with torch.no_grad():
        for name, tensor in sorted(backbone.model.state_dict().items()):
            _hash_tensor(digest, name, tensor)
    digest.update(f"|{type(backbone.tokenizer).__name__}|{len(backbone.tokenizer)}".encode())
    image_processor = getattr(backbone.processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_dict"):
        digest.update(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _hash_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        inner, _ = tensor.__tensor_flatten__()  # e.g. torchao's int8 weights: data and scales
        digest.update(f"{name}|{type(tensor).__name__}".encode())
        for key in inner:
            _hash_tensor(digest, f"{name}.{key}", getattr(tensor, key))
        return
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{name}|{tuple(tensor.shape)}|{flat.dtype}".encode())
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy().tobytes())


def as_json(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists, other objects as strings): what a manifest holds."""
    return json.loads(json.dumps(value, default=str))


def shard_ranges(rows: int, shard_size: int) -> list[dict[str, Any]]:
    """The shards of ``rows`` records, ``shard_size`` each (the last one shorter): name, start, stop."""
    return [{"name": f"shard-{i:05d}", "start": start, "stop": min(start + shard_size, rows)}
            for i, start in enumerate(range(0, rows, shard_size))]


def vectors_path(folder: Path, shard: dict[str, Any]) -> Path:
    return folder / f"{shard['name']}.npy"


def ids_path(folder: Path, shard: dict[str, Any]) -> Path:
    return folder / f"{shard['name']}.ids.json"


def shard_done(folder: Path, shard: dict[str, Any], dimension: int, dtype: str) -> bool:
    """Whether ``shard`` is finished: its ids file and its vectors of the right shape and dtype are there."""
    path = vectors_path(folder, shard)
    if not (path.is_file() and ids_path(folder, shard).is_file()):
        return False
    try:
        vectors = NpyFile(path)
    except (OSError, ValueError):
        return False
    return tuple(vectors.shape) == (shard["stop"] - shard["start"], dimension) and vectors.dtype == np.dtype(dtype)


def compat_key(manifest: dict[str, Any]) -> str:
    """A 16-hex-digit hash of everything :func:`check_compatible` compares (a name for caches of this index)."""
    values = [_get(manifest, keys) for keys, _, _ in CHECKS]
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _get(manifest: dict[str, Any], keys: Sequence[str]) -> Any:
    value: Any = manifest
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_compatible(old: dict[str, Any], new: dict[str, Any], folder: Path) -> None:
    """Raise :class:`RunStateError` (one line: the first difference and the fix) when the index in ``folder``
    (``old``) was built with settings that give other vectors than this run's (``new``)."""
    for keys, what, fix in CHECKS:
        before, now = _get(old, keys), _get(new, keys)
        if before == now:
            continue
        if keys == ("model", "config") and isinstance(before, dict) and isinstance(now, dict):
            key = next(k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k))
            what, before, now = f"another model setting '{key}'", before.get(key), now.get(key)
        raise RunStateError(f"index folder '{folder}' was built with {what}: {_short(before)} there, {_short(now)} "
                            f"now; shards of both cannot be mixed. Rerun with {fix} to resume it, or build into "
                            f"another folder (--output).")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an index folder; a folder without one (or a file that is not one) raises
    :class:`DataError`."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"'{folder}' is not an index folder (it has no {MANIFEST}); build one with "
                        f"`mmembed index build --corpus ... --output {folder}`.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable manifest ({exc}); rebuild the index into a new folder.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an mmembed index manifest (no \"format\": \"{FORMAT}\").")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: index format version {manifest.get('version')!r}, this mmembed reads {VERSION}; "
                        f"rebuild the index with this version.")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
