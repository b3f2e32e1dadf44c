"""``backend="onnx"`` at load time (:meth:`mmembed.Embedder.load`): the language model's forward pass through ONNX
Runtime (CPU), exported once by ``torch.onnx`` and cached.

What runs in ONNX is the model body, from token ids to the last layer's token states (float32); tokenization, the
template, the pooler, truncation and normalisation stay mmembed's, so the vectors are those of the torch path (min
cosine >= 0.9999 in the tests). A LoRA adapter is merged before the export. With ``quantize="int8"`` the exported
graph gets ONNX Runtime's dynamic int8 quantization (per-channel weights, one activation scale per tensor): right
for BERT-style encoders, while on decoder LLMs activation outliers cost accuracy (``mmembed.quantize`` explains;
``bench/encode.py`` measures both).

The export is cached under ``<cache>/onnx/<fingerprint>/model.onnx`` (``$MMEMBED_CACHE`` or ``~/.cache/mmembed``),
the fingerprint hashing the weights, the architecture and the quantization, and written under a temporary name that
is renamed when complete. Not supported, and refused with one line: images (ONNX carries the text model only),
early exit (``layer=``), a CUDA device, and the shared-prefix KV cache (the full sequence runs instead).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, InputError

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
INSTALL_HINT = 'pip install "mmembed[fast]" (onnxruntime, onnx)'
OPSET = 17


def check_backend(value: Any) -> str:
    """``value`` as a backend name (``None``: ``"torch"``)."""
    if value is None:
        return "torch"
    if value not in BACKENDS:
        raise ConfigError(f"backend={value!r}; choose one of {', '.join(BACKENDS)}.")
    return value


def check_onnx_options(device: Any, layer: int, causal_lm: bool) -> None:
    """Refuse, in one line, what the ONNX backend does not run: a CUDA device, early exit, rationale mode."""
    if device is not None and torch.device(device).type != "cpu":
        raise ConfigError(f"backend='onnx' runs on the CPU (ONNX Runtime's CPU provider), not device={str(device)!r}; "
                          f"use device='cpu', or the torch backend on the GPU.")
    if layer != -1:
        raise ConfigError(f"backend='onnx' exports the full model: layer={layer} (early exit) needs the torch backend.")
    if causal_lm:
        raise ConfigError("backend='onnx' exports the embedding pass only: rationale mode generates, so it needs the "
                          "torch backend.")


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"backend='onnx' needs onnxruntime: {INSTALL_HINT}.") from None
    return onnxruntime


def fingerprint(model: nn.Module, input_names: list[str], quantize: str | None) -> str:
    """A hash of the model's weights (names, shapes, dtypes and bytes), its class and config, the graph's inputs and
    the quantization: the cache key of its export."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(model).__name__}|{model.config.to_json_string()}|{input_names}|{quantize}|{OPSET}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Please consider to run pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """ONNX Runtime's quantizer logs on the root logger that shape inference could be run first (it is not needed
    for dynamic quantization): dropped while it runs."""
    root, advice = logging.getLogger(), _DropAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class _Body(nn.Module):
    """The exported function: the model body's last-layer token states from its named inputs."""

    def __init__(self, body: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.body, self.input_names = body, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.input_names, inputs, strict=True))
        return self.body(**kwargs, use_cache=False, return_dict=True).last_hidden_state


def export(body: nn.Module, input_names: list[str], sample: dict[str, torch.Tensor], target: Path,
           quantize: str | None) -> Path:
    """Export a float32 copy of ``body`` to ``target`` (``model.onnx`` in its own folder, with the weights beside it when
    ONNX needs external data), quantized to int8 when asked; the folder appears whole or not at all."""
    body = copy.deepcopy(body).float()
    if hasattr(body, "set_attn_implementation"):
        # eager attention exports to plain ops ONNX Runtime runs faster than the traced SDPA path (all-MiniLM-L6-v2,
        # 2 CPU cores: 534 vs 477 sentences/s); the vectors are the same
        body.set_attn_implementation("eager")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.parent.name}-", dir=target.parent.parent))
    try:
        graph = stage / "float.onnx" if quantize else stage / target.name
        names = {name: {0: "batch", 1: "sequence"} for name in input_names}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's tracer warnings: the graph is checked by the tests
            torch.onnx.export(_Body(body, input_names).eval(), tuple(sample[n] for n in input_names), str(graph),
                              input_names=input_names, output_names=["states"],
                              dynamic_axes={**names, "states": {0: "batch", 1: "sequence"}}, opset_version=OPSET,
                              dynamo=False)
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _without_preprocessing_advice():
                quantize_dynamic(str(graph), str(stage / target.name), weight_type=QuantType.QInt8, per_channel=True)
            for leftover in stage.glob("float.onnx*"):
                leftover.unlink()
        os.replace(stage, target.parent)  # the whole folder at once
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


class OnnxBody:
    """An ONNX Runtime session standing in for the model body: ``body(**inputs).last_hidden_state``."""

    def __init__(self, path: Path, input_names: list[str]) -> None:
        onnxruntime = _onnxruntime()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = input_names
        self.path = path

    def __call__(self, **inputs: Any) -> SimpleNamespace:
        if "pixel_values" in inputs or "pixel_values_videos" in inputs:
            raise InputError("backend='onnx' runs the text model only: encode images with the torch backend "
                             "(load without backend='onnx').")
        mask = inputs["attention_mask"]
        if "position_ids" in self.input_names and inputs.get("position_ids") is None:
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if "token_type_ids" in self.input_names and inputs.get("token_type_ids") is None:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])  # what the torch model assumes
        feed = {name: inputs[name].to("cpu").long().numpy() for name in self.input_names}
        states = self.session.run(None, feed)[0]
        return SimpleNamespace(last_hidden_state=torch.from_numpy(states))


def onnx_body(model: nn.Module, body: nn.Module, input_names: list[str], sample: dict[str, torch.Tensor],
              quantize: str | None, cache: Path) -> OnnxBody:
    """The cached export of ``body`` (``model``'s, float32, adapter merged) as an :class:`OnnxBody`, exporting it
    first when the cache has none for these weights."""
    _onnxruntime()
    target = cache / "onnx" / fingerprint(model, input_names, quantize) / "model.onnx"
    if not target.is_file():
        logger.warning("exporting %s to ONNX%s (once; cached in %s)", type(model).__name__,
                       " with int8 quantization" if quantize else "", target.parent)
        export(body, input_names, sample, target, quantize)
    return OnnxBody(target, input_names)
