"""LoRA adapters through PEFT: attach, load (with a clear error when the adapter does not fit), merge."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

from torch import nn

from .errors import AdapterMismatchError, ModelNotFoundError


def has_adapter(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if has_adapter(model) else model


def attach(model: nn.Module, config) -> nn.Module:
    """Wrap ``model`` with a new, trainable LoRA adapter described by a ``peft.LoraConfig``."""
    from peft import get_peft_model

    return get_peft_model(model, config)


def load_adapter(model: nn.Module, adapter: str | Path, is_trainable: bool = False) -> nn.Module:
    """Put the PEFT adapter saved in folder ``adapter`` on ``model``; raise if it belongs to another base model."""
    from peft import PeftModel

    adapter = Path(adapter)
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"no LoRA adapter at '{adapter}': adapter_config.json is missing. Pass the folder "
                                 f"written by Embedder.save(..., adapter_only=True) or peft's save_pretrained.")
    declared = json.loads(config_file.read_text()).get("base_model_name_or_path")
    ours = getattr(model.config, "_name_or_path", None)
    hint = (f"The adapter was trained on '{declared}' but the base model is '{ours}' ({type(model).__name__}). "
            f"Load the adapter onto the base model it was trained on.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            wrapped = PeftModel.from_pretrained(model, str(adapter), is_trainable=is_trainable)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise AdapterMismatchError(f"LoRA adapter '{adapter}' does not fit this model: {exc}\n{hint}") from exc
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        raise AdapterMismatchError(f"LoRA adapter '{adapter}' does not fit this model: {missing[0][:300]}\n{hint}")
    unused = _unused_adapter_keys(wrapped, adapter)
    if unused:
        raise AdapterMismatchError(f"LoRA adapter '{adapter}' does not fit this model: {len(unused)} adapter weights "
                                   f"have no place in it (e.g. {unused[:2]}).\n{hint}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return wrapped


def _unused_adapter_keys(wrapped: nn.Module, adapter: Path) -> list[str]:
    """Adapter weights that PEFT silently skipped because the model has no such module (e.g. a deeper base)."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return []
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        saved = set(f.keys())
    name = wrapped.active_adapter
    present = {k.replace(f".{name}.", ".") for k in wrapped.state_dict()}
    return sorted(saved - present)


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its LoRA weights merged into the base weights (for export and serving)."""
    return copy.deepcopy(model).merge_and_unload()
