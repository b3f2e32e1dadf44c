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


def language_model_linear_layers(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Full module paths of the ``nn.Linear`` layers inside the language model (never the vision tower).

    ``names`` keeps only layers whose last path component is listed (e.g. ``["q_proj", "v_proj"]``).
    """
    base = base_model(model)
    try:
        decoder = base.get_decoder()
    except (AttributeError, ValueError, NotImplementedError):
        decoder = base
    prefix = next((name for name, module in base.named_modules() if module is decoder), "")
    found = [f"{prefix}.{name}" if prefix else name for name, module in decoder.named_modules()
             if isinstance(module, nn.Linear) and (names is None or name.rsplit(".", 1)[-1] in names)]
    if not found:
        raise ValueError(f"no nn.Linear layers{f' named {names}' if names else ''} in the language model of "
                         f"{type(base).__name__}.")
    return found


def lora_config(model: nn.Module, r: int = 64, alpha: int = 128, dropout: float = 0.05,
                target_modules: list[str] | None = None, **kwargs):
    """A ``peft.LoraConfig`` on the language model's linear layers, chosen by module path (vision tower excluded).

    ``target_modules`` lists short names (``q_proj`` ...); by default every linear layer of the language model.
    """
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      target_modules=language_model_linear_layers(model, target_modules), **kwargs)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


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
