"""``backend="onnx"`` at load time (:meth:`mmembed.Embedder.load`): the language model's forward pass through ONNX
Runtime (CPU), exported once by ``torch.onnx`` and cached.

What runs in ONNX is the model body, from token ids to the last layer's token states (float32); tokenization, the
template, the pooler, truncation and normalisation stay mmembed's, so the vectors are those of the torch path (min
cosine >= 0.9999 in the tests). A LoRA adapter is merged before the export. With ``quantize="int8"`` the exported
graph's matrix products get int8 weights, in one of two ONNX Runtime schemes (:func:`quantize_int8`):

- BERT-style encoders: dynamic int8 quantization (``quantize_dynamic``: per-channel weights, one activation scale per
  tensor), what sentence-transformers' ONNX-int8 export uses, with its accuracy (all-MiniLM-L6-v2, 1,000 STS-B
  sentences: 1.7-2.1x float32 torch at min cosine 0.980-0.987, where blocks of 128 give 0.995 at 1.4x;
  ``quantize="int8"`` on the torch backend keeps 0.995);
- decoder LLMs: ``MatMulNBits`` with 8-bit weights in blocks of :data:`BLOCK_SIZE` and int8 activations scaled per
  block of each token (accuracy level 4). One activation scale per tensor is what decoders cannot take: the few huge
  activations of the attention-sink token (up to 3,000x a layer's RMS at the input of the default model's ``down_proj``
  layers) set the scale of the whole batch. Measured on the default model, 400 STS-B sentences, 2 CPU cores
  (2026-12-07): per-tensor dynamic int8 4.5x float32 torch at min cosine 0.876 (0.987 with every ``down_proj`` left
  float, at 2.0x); ``MatMulNBits`` 8-bit 1.8-2.0x at min cosine 0.996-0.998.

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
INSTALL_HINT = 'pip install "mmembed[fast]" (onnxruntime, onnx, onnx-ir)'
OPSET = 17
#: the weights' block of the decoders' 8-bit ``MatMulNBits`` (and of their activations' scales)
BLOCK_SIZE = 128


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
           quantize: str | None, blockwise: bool = False) -> Path:
    """Export a float32 copy of ``body`` to ``target`` (``model.onnx`` in its own folder, with the weights beside it when
    ONNX needs external data), quantized to int8 when asked (``blockwise``: :func:`quantize_int8`); the folder appears
    whole or not at all."""
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
            quantize_int8(graph, stage / target.name, blockwise)
            for leftover in stage.glob("float.onnx*"):
                leftover.unlink()
        os.replace(stage, target.parent)  # the whole folder at once
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def quantize_int8(source: Path, target: Path, blockwise: bool) -> None:
    """Write ``source``'s graph with int8 matrix products to ``target``: per-tensor dynamic int8, or with ``blockwise``
    (decoder LLMs) ``MatMulNBits`` 8-bit blocks with int8 activations per block (see the module's docstring)."""
    if not blockwise:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _without_preprocessing_advice():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
        return
    import onnx

    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)  # the module calls logging.basicConfig(level=INFO) on import: give it nothing to configure
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    except ImportError as exc:
        raise ConfigError(f"backend='onnx' with quantize='int8' needs {exc.name}: {INSTALL_HINT}.") from None
    finally:
        root.removeHandler(guard)
    external = any(p.name != source.name for p in source.parent.glob(f"{source.name}*"))  # the weights beside it
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(source)), bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                                           accuracy_level=4)
    level = nbits.logger.level
    nbits.logger.setLevel(logging.WARNING)  # a line per node otherwise
    try:
        quantizer.process()
    finally:
        nbits.logger.setLevel(level)
    quantizer.model.save_model_to_file(str(target), use_external_data_format=external)


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
              quantize: str | None, cache: Path, encoder: bool = False) -> OnnxBody:
    """The cached export of ``body`` (``model``'s, float32, adapter merged) as an :class:`OnnxBody`, exporting it
    first when the cache has none for these weights (int8: per tensor for an ``encoder``, else blockwise)."""
    _onnxruntime()
    scheme = None if not quantize else quantize if encoder else f"{quantize}-blocks{BLOCK_SIZE}"
    target = cache / "onnx" / fingerprint(model, input_names, scheme) / "model.onnx"
    if not target.is_file():
        logger.warning("exporting %s to ONNX%s (once; cached in %s)", type(model).__name__,
                       " with int8 quantization" if quantize else "", target.parent)
        export(body, input_names, sample, target, quantize, blockwise=bool(quantize) and not encoder)
    return OnnxBody(target, input_names)
