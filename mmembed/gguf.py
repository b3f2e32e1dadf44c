"""GGUF -> plain Hugging Face folder, converted once and cached.

A model loaded by transformers from a GGUF file is flagged as quantized: it cannot be saved or LoRA-trained as is.
mmembed dequantises it once into a plain folder (config, safetensors, tokenizer, chat template) under the cache
directory and loads that folder from then on. The folder name carries a fingerprint of the GGUF file, and the
folder is written to a temporary name and renamed at the end, so an interrupted conversion leaves no half folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$MMEMBED_CACHE`` or ``~/.cache/mmembed``."""
    return Path(os.environ.get("MMEMBED_CACHE", Path.home() / ".cache" / "mmembed")).expanduser()


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def converted_path(gguf_path: str | Path, root: str | Path | None = None) -> Path:
    """Where the plain folder for ``gguf_path`` lives (it may not exist yet)."""
    gguf_path = Path(gguf_path)
    root = Path(root) if root is not None else cache_dir() / "gguf"
    return root / f"{gguf_path.stem}-{_fingerprint(gguf_path)}"


def convert_gguf(gguf_path: str | Path, root: str | Path | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Convert ``gguf_path`` to a plain HF folder (once) and return the folder."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        from .errors import ModelNotFoundError

        raise ModelNotFoundError(f"GGUF file '{gguf_path}' does not exist.")
    target = converted_path(gguf_path, root)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("Converting %s to a plain Hugging Face folder at %s (once).", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
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
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
