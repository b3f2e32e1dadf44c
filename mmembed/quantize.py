"""Fast CPU inference: ``quantize="int8"`` at load time (:meth:`mmembed.Embedder.load`).

``int8`` is dynamic int8 through torchao (``Int8DynamicActivationInt8WeightConfig``): weights int8 per output
channel, activations int8 per token, scaled at run time, int32 accumulation. The ``nn.Linear`` layers of the language
model are quantized except, in decoder LLMs, those of the first transformer layer (:func:`_quantizable`), and the
output head (rationale mode generates with it); a vision tower stays float; a LoRA adapter is merged first.

Per-token activation scales are what keep decoder LLMs usable at int8: measured on the default model (SmolLM2-135M +
adapter, 300 STS-B sentences, 2 CPU cores) torchao gave 58 sentences/s against 29 for the float32 model as loaded
(2.0x) with min cosine 0.992 to it; PyTorch's older ``quantize_dynamic`` (one activation scale per tensor) and ONNX
Runtime's dynamic quantization (the same) were as fast or faster but reached min cosine 0.76 and 0.87, because the
activation outliers of a few tokens set the scale of the whole batch (``bench/encode.py`` measures all paths;
``backend="onnx"`` therefore quantizes decoders in blocks: :mod:`mmembed.onnx_backend`).

A quantized model saves its weights dequantized (float: each weight its int8 value times its channel scale, what
any tool can load) plus the int8 values and scales themselves (:data:`INT8_FILE`), with ``"quantize": "int8"`` in
``mmembed_config.json``; loading that folder quantizes and then restores those exact int8 weights, so the saved
folder encodes exactly as the model that was saved (quantizing the dequantized weights again would not: torchao's
scale is the channel's absolute maximum / 127.5, which the rounded values do not reproduce).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError, ModelFolderError

#: the ``quantize`` values ``load`` accepts ("none": clear a saved choice)
QUANTIZATIONS = ("int8",)
#: the int8 weights and scales of a saved quantized model (``<layer>.qdata`` / ``<layer>.scale``)
INT8_FILE = "int8_weights.safetensors"
INSTALL_HINT = 'pip install "mmembed[fast]" (torchao)'


class _DropImportNoise(logging.Filter):
    """Importing torchao logs a warning for each of its CUDA-only kernel libraries when there is no CUDA, and torch
    one for each enum torchao registers with ``torch.compile``; neither concerns a user, so those lines are dropped
    (every other message of both loggers passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ((message.startswith("Failed to load") and ".so" in message)
                    or "Calling register_constant() on Enum subclasses is deprecated" in message)


def quiet_torchao() -> None:
    """Install the filter (before anything imports torchao: PEFT does, when torchao is installed)."""
    for name in ("torchao", "torch.utils._pytree"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropImportNoise) for f in logger.filters):
            logger.addFilter(_DropImportNoise())


def check_quantize(value: Any) -> str | None:
    """``value`` as a quantization mode: ``None`` / ``"none"`` (float weights) or one of :data:`QUANTIZATIONS`."""
    if value is None or value == "none":
        return None
    if value not in QUANTIZATIONS:
        raise ConfigError(f"quantize={value!r}; choose one of {', '.join(QUANTIZATIONS)} (or none).")
    return value


def _torchao() -> Any:
    quiet_torchao()
    logging.disable(logging.WARNING)  # and nothing torchao logs while importing, whatever reset the loggers
    try:
        from torchao import quantization
    except ImportError:
        raise ConfigError(f"quantize='int8' needs torchao: {INSTALL_HINT}.") from None
    finally:
        logging.disable(logging.NOTSET)
    return quantization


def _first_layer(names: list[str]) -> str | None:
    """The path prefix of the first transformer layer among linear-layer ``names`` (``"layers.0."``,
    ``"encoder.layer.0."``): the most common path before the first numeric component, plus ``.0.``."""
    lists = {}
    for name in names:
        parts = name.split(".")
        index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if index is not None:
            stack = ".".join(parts[:index])
            lists[stack] = lists.get(stack, 0) + 1
    if not lists:
        return None
    stack = max(lists, key=lists.get)
    return f"{stack}.0." if stack else "0."


def _quantizable(model: nn.Module, keep_first_layer: bool) -> Any:
    """The filter of the layers to quantize: the language model's ``nn.Linear`` layers (never a vision tower), but
    not the output head, nor, with ``keep_first_layer`` (decoder LLMs), those of its first transformer layer. A
    decoder's first layer produces the few very large activations (attention sinks) that cost int8 the most: on the
    default model, 1,000 STS-B sentences, min cosine to float32 0.9885 with every layer quantized, 0.9917 with the
    first kept float (1 of 30 layers). BERT-style encoders have no such layer (all-MiniLM-L6-v2: 0.9954 with every
    layer quantized, 0.9880 with the first kept float), so all their layers are quantized."""
    from .lora import language_model_linear_layers

    names = language_model_linear_layers(model)
    first = _first_layer(names) if keep_first_layer else None
    keep = {name for name in names if first is None or not name.startswith(first)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def wanted(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and name in keep and module is not head

    return wanted


def quantize_model(model: nn.Module, mode: str, keep_first_layer: bool = True) -> nn.Module:
    """``model`` (a LoRA adapter merged first) with its linear layers quantized to ``mode``, in place (the first
    transformer layer kept float with ``keep_first_layer``: decoder LLMs, :func:`_quantizable`)."""
    from . import lora

    if lora.has_adapter(model):
        model = model.merge_and_unload()
    if any(p.requires_grad for p in model.parameters()) and model.training:
        raise ConfigError("quantize='int8' is for inference: the model is in training mode with trainable weights; "
                          "train the float model and quantize the saved one at load.")
    quantization = _torchao()
    quantization.quantize_(model, quantization.Int8DynamicActivationInt8WeightConfig(),
                           filter_fn=_quantizable(model, keep_first_layer))
    warn_if_slow_int8(model)
    return model


#: CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) whose int8 kernels are slower than float32
SLOW_INT8_CPUS = ("AVX2", "NO AVX")


def warn_if_slow_int8(model: nn.Module) -> None:
    """Warn, once per load, when ``model`` runs on a CPU whose int8 matrix products are slower than float32: on an
    x86 CPU without AVX-512 (AVX2 only), torchao's dynamic int8 encoded the default model at 1.3 sentences/s against
    25 in float32 (2 cores, 2026-12-08); with AVX-512 it is 1.8x faster than float32 (``bench/SPEED.md``)."""
    import torch

    on_cpu = next(model.parameters()).device.type == "cpu"
    capability = torch.backends.cpu.get_cpu_capability()
    if on_cpu and capability in SLOW_INT8_CPUS:
        warnings.warn(f"quantize='int8': this CPU has {capability} and no AVX-512, where int8 matrix products are "
                      f"much slower than float32 (about 20x on the default model); load without quantize here.",
                      stacklevel=3)


def is_quantized_weight(weight: Any) -> bool:
    return hasattr(weight, "dequantize") and type(weight).__module__.startswith("torchao")


def dequantized_copy(model: nn.Module) -> nn.Module:
    """A copy of a quantized ``model`` whose quantized linear weights are float again (int8 value x channel scale),
    for saving: quantizing it again gives the same int8 weights."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, nn.Linear) and is_quantized_weight(module.weight):
            module.weight = nn.Parameter(module.weight.dequantize(), requires_grad=False)
    return copied


def _quantized_layers(model: nn.Module) -> dict[str, Any]:
    return {name: module.weight for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and is_quantized_weight(module.weight)}


def save_int8(model: nn.Module, file: str | Path) -> None:
    """Write the int8 values and scales of ``model``'s quantized linear layers to ``file`` (safetensors)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, weight in _quantized_layers(model).items():
        tensors[f"{name}.qdata"] = weight.qdata.contiguous()
        tensors[f"{name}.scale"] = weight.scale.contiguous()
    save_file(tensors, str(file))


def restore_int8(model: nn.Module, file: str | Path) -> None:
    """Put the int8 values and scales saved by :func:`save_int8` into ``model``'s quantized layers (just quantized
    from the dequantized weights); a layer missing from either side, or of another shape, is a ModelFolderError."""
    from safetensors.torch import load_file

    saved = load_file(str(file))
    layers = _quantized_layers(model)
    names = {key.rpartition(".")[0] for key in saved}
    if names != set(layers):
        odd = sorted(names ^ set(layers))
        raise ModelFolderError(f"{file}: its int8 layers do not match the model's ({odd[0]} is on one side only); "
                               f"save the model again.")
    for name, weight in layers.items():
        for part in ("qdata", "scale"):
            target, value = getattr(weight, part), saved[f"{name}.{part}"]
            if target.shape != value.shape or target.dtype != value.dtype:
                raise ModelFolderError(f"{file}: {name}.{part} is {tuple(value.shape)} {value.dtype}, the model's "
                                       f"is {tuple(target.shape)} {target.dtype}; save the model again.")
            target.copy_(value)
