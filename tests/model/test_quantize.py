"""``quantize="int8"``: dynamic int8 linear layers (torchao) keep the vectors of the float model (cosine >= 0.99) on a
tiny Qwen2 (all linear layers but the first transformer layer's), a LoRA adapter on it, the real all-MiniLM-L6-v2 and the default model; a saved quantized folder loads
with exactly the saved model's vectors (in mmembed and sentence-transformers); bad combinations are one-line errors.
``backend="onnx"`` gives the torch vectors, and with ``quantize="int8"`` 8-bit blocks (decoders, cosine >= 0.99) or
per-tensor int8 (encoders, as sentence-transformers' ONNX-int8 export)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

import mmembed
from mmembed import defaults
from mmembed.errors import ConfigError

pytest.importorskip("torchao")

TEXTS = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.",
         "A cat sits on the mat.", "Two dogs run in the park.", "hi",
         "Shares dropped after the earnings report, and analysts cut their forecasts for the year."]


def _min_cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def _quantized_linears(model) -> tuple[int, int]:
    from mmembed.quantize import is_quantized_weight

    linears = [m for m in model.backbone.model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(is_quantized_weight(m.weight) for m in linears), len(linears)


def test_int8_keeps_the_tiny_models_vectors_and_quantizes_every_linear_but_the_head(qwen2_path):
    float_model = mmembed.load(str(qwen2_path), device="cpu")
    model = mmembed.load(str(qwen2_path), device="cpu", quantize="int8")
    assert model.backbone.quantize == "int8" and float_model.backbone.quantize is None
    quantized, linears = _quantized_linears(model)
    assert (quantized, linears) == (7, 2 * 7)  # layer 1's q, k, v, o, gate, up, down; layer 0 stays float
    assert _min_cos(model.encode(TEXTS), float_model.encode(TEXTS)) >= 0.99
    assert not np.allclose(model.encode(TEXTS), float_model.encode(TEXTS), atol=1e-6)  # it really is another path


def test_int8_warns_on_a_cpu_without_avx512_only(qwen2_path, monkeypatch):
    """torchao's int8 kernels are ~20x slower than float32 on an AVX2-only CPU: loading says so there, not elsewhere."""
    import warnings

    for capability, warned in (("AVX2", True), ("AVX512", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mmembed.load(str(qwen2_path), device="cpu", quantize="int8")
        slow = [w for w in caught if "no AVX-512" in str(w.message)]
        assert len(slow) == int(warned), capability


def test_int8_merges_a_lora_adapter_first(qwen2_path, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = mmembed.load(str(qwen2_path), device="cpu")
    torch.manual_seed(0)
    base.backbone.model = get_peft_model(base.backbone.model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                         target_modules=["q_proj", "up_proj"]))
    base.save(tmp_path / "adapter", adapter_only=True)
    with_adapter = mmembed.load(str(qwen2_path), adapter=str(tmp_path / "adapter"), device="cpu")
    plain = mmembed.load(str(qwen2_path), device="cpu").encode(TEXTS)
    quantized = mmembed.load(str(qwen2_path), adapter=str(tmp_path / "adapter"), device="cpu", quantize="int8")
    assert type(quantized.backbone.model).__name__ == "Qwen2Model"  # merged: no PEFT wrapper left
    assert _min_cos(quantized.encode(TEXTS), with_adapter.encode(TEXTS)) >= 0.99
    assert _min_cos(with_adapter.encode(TEXTS), plain) < 0.99  # the adapter matters, so the check above means it


def test_a_saved_int8_folder_loads_with_exactly_the_saved_vectors(qwen2_path, tmp_path):
    model = mmembed.load(str(qwen2_path), device="cpu", quantize="int8")
    model.save(tmp_path / "int8")
    config = json.loads((tmp_path / "int8" / "mmembed_config.json").read_text())
    assert config["quantize"] == "int8" and "int8_weights.safetensors" in config["files"]
    again = mmembed.load(str(tmp_path / "int8"))
    assert again.backbone.quantize == "int8"
    assert np.array_equal(again.encode(TEXTS), model.encode(TEXTS))  # the exact int8 weights, not requantized
    floats = mmembed.load(str(tmp_path / "int8"), quantize="none")  # the dequantized weights, as any tool loads them
    assert floats.backbone.quantize is None and _min_cos(floats.encode(TEXTS), model.encode(TEXTS)) >= 0.99
    st = pytest.importorskip("sentence_transformers")
    vectors = st.SentenceTransformer(str(tmp_path / "int8"), trust_remote_code=True).encode(TEXTS)
    assert np.abs(vectors - model.encode(TEXTS)).max() < 1e-6  # mmembed's module, not ST's float modules


def test_bad_quantize_values_and_combinations_are_one_line_errors(qwen2_path, tmp_path):
    with pytest.raises(ConfigError, match=r"^quantize='int4'; choose one of int8 \(or none\)\.$"):
        mmembed.load(str(qwen2_path), quantize="int4")
    model = mmembed.load(str(qwen2_path), device="cpu", quantize="int8")
    with pytest.raises(ValueError, match="quantized \\(int8\\) with its adapter merged: save the whole model"):
        model.save(tmp_path / "adapter", adapter_only=True)
    assert not (tmp_path / "adapter").exists()


def test_the_cli_encodes_with_int8(qwen2_path, tmp_path, capsys):
    from mmembed.cli import main

    out = tmp_path / "v.npy"
    assert main(["encode", *TEXTS[:3], "--model", str(qwen2_path), "--quantize", "int8", "-o", str(out)]) == 0
    expected = mmembed.load(str(qwen2_path), quantize="int8").encode(TEXTS[:3])
    assert np.abs(np.load(out) - expected).max() < 1e-6


def test_int8_keeps_all_minilm_l6_v2s_vectors():
    path = defaults.offline_model_path("all-MiniLM-L6-v2")
    float_model, model = mmembed.load(path, device="cpu"), mmembed.load(path, device="cpu", quantize="int8")
    assert _quantized_linears(model)[0] == 6 * 6 + 1  # 6 layers x (query, key, value, attention out, intermediate,
    # out) and BERT's pooler dense layer: an encoder keeps no layer float
    assert _min_cos(model.encode(TEXTS), float_model.encode(TEXTS)) >= 0.99


@pytest.mark.skipif(importlib.util.find_spec(defaults.PACKAGE) is None, reason=f"needs {defaults.WHEEL}")
def test_int8_keeps_the_default_models_vectors():
    float_model, model = mmembed.load(), mmembed.load(quantize="int8")
    assert _min_cos(model.encode(TEXTS), float_model.encode(TEXTS)) >= 0.99


# ------------------------------------------------------------------------------------------- backend="onnx"
@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def test_onnx_gives_the_torch_vectors_and_exports_once(qwen2_path, onnx_cache, tmp_path, caplog):
    ours = mmembed.load(str(qwen2_path), device="cpu")
    model = mmembed.load(str(qwen2_path), device="cpu", backend="onnx")
    assert model.backbone.backend == "onnx" and not model.backbone.can_cache_prefix
    assert np.abs(model.encode(TEXTS) - ours.encode(TEXTS)).max() < 1e-5
    exports = list(onnx_cache.glob("*/model.onnx"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    caplog.clear()
    again = mmembed.load(str(qwen2_path), device="cpu", backend="onnx")
    assert "exporting" not in caplog.text and exports[0].stat().st_mtime_ns == stamp  # the cached export
    assert list(onnx_cache.iterdir()) == [exports[0].parent]  # no temporary folder left
    again.save(tmp_path / "onnx")
    assert json.loads((tmp_path / "onnx" / "mmembed_config.json").read_text())["backend"] == "onnx"
    reloaded = mmembed.load(str(tmp_path / "onnx"))
    assert reloaded.backbone.backend == "onnx" and np.array_equal(reloaded.encode(TEXTS), again.encode(TEXTS))
    assert mmembed.load(str(tmp_path / "onnx"), backend="torch").backbone.backend == "torch"


def test_onnx_gives_all_minilm_l6_v2s_and_the_default_models_vectors(onnx_cache):
    path = defaults.offline_model_path("all-MiniLM-L6-v2")
    expected = mmembed.load(path, device="cpu").encode(TEXTS)
    assert np.abs(mmembed.load(path, device="cpu", backend="onnx").encode(TEXTS) - expected).max() < 1e-5
    if importlib.util.find_spec(defaults.PACKAGE) is not None:
        expected = mmembed.load().encode(TEXTS)
        assert np.abs(mmembed.load(backend="onnx").encode(TEXTS) - expected).max() < 1e-5


def test_what_onnx_does_not_run_is_refused_in_one_line(qwen2_path, qwen2_vl_path, onnx_cache, images):
    from mmembed.errors import InputError
    from mmembed.rationale import RationaleConfig

    with pytest.raises(ConfigError, match=r"^backend='onnx' exports the full model: layer=1 \(early exit\) needs"):
        mmembed.load(str(qwen2_path), backend="onnx", layer=1)
    with pytest.raises(ConfigError, match=r"^backend='onnx' runs on the CPU .*not device='cuda'"):
        mmembed.load(str(qwen2_path), backend="onnx", device="cuda")
    with pytest.raises(ConfigError, match=r"^backend='onnx' exports the embedding pass only: rationale mode"):
        mmembed.load(str(qwen2_path), backend="onnx", rationale=RationaleConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match=r"^backend='tensorrt'; choose one of torch, onnx\.$"):
        mmembed.load(str(qwen2_path), backend="tensorrt")
    vlm = mmembed.load(str(qwen2_vl_path), device="cpu", backend="onnx")
    assert np.abs(vlm.encode(TEXTS[:2]) - mmembed.load(str(qwen2_vl_path), device="cpu").encode(TEXTS[:2])).max() < 1e-5
    with pytest.raises(InputError, match="backend='onnx' runs the text model only: encode images with the torch"):
        vlm.encode([images[0]])


def test_the_cli_encodes_with_onnx(qwen2_path, onnx_cache, tmp_path):
    from mmembed.cli import main

    out = tmp_path / "v.npy"
    assert main(["encode", *TEXTS[:3], "--model", str(qwen2_path), "--backend", "onnx", "-o", str(out)]) == 0
    assert np.abs(np.load(out) - mmembed.load(str(qwen2_path)).encode(TEXTS[:3])).max() < 1e-5
    assert len(list(onnx_cache.glob("*/model.onnx"))) == 1


# ------------------------------------------------------------------------------ backend="onnx" + quantize="int8"
def _onnx_ops(model) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(model.backbone.onnx.path), load_external_data=False).graph.node}


def test_onnx_int8_is_blockwise_for_decoders_per_tensor_for_encoders(qwen2_path, onnx_cache,
                                                                       tmp_path):
    pytest.importorskip("onnx_ir")
    texts = TEXTS * 3  # batches of several lengths: a per-block activation scale must not depend on the batch
    decoder = mmembed.load(str(qwen2_path), device="cpu", backend="onnx", quantize="int8")
    ops = _onnx_ops(decoder)
    assert "MatMulNBits" in ops and "MatMulInteger" not in ops  # 8-bit blocks: no per-tensor activation scale
    assert len(list(onnx_cache.glob("*/model.onnx"))) == 1 and not list(onnx_cache.glob(".*"))  # no staging left
    assert _min_cos(decoder.encode(texts), mmembed.load(str(qwen2_path), device="cpu").encode(texts)) >= 0.99
    decoder.save(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "mmembed_config.json").read_text())
    assert (config["backend"], config["quantize"]) == ("onnx", "int8")
    again = mmembed.load(str(tmp_path / "q"))
    assert (again.backbone.backend, again.backbone.quantize) == ("onnx", "int8")
    assert np.array_equal(again.encode(texts), decoder.encode(texts))  # the same int8 weights
    path = defaults.offline_model_path("all-MiniLM-L6-v2")
    encoder = mmembed.load(path, device="cpu", backend="onnx", quantize="int8")
    assert "MatMulInteger" in _onnx_ops(encoder)  # per-tensor dynamic int8, as sentence-transformers' export
    # the speed path of sentence-transformers' ONNX-int8 export, with its accuracy (min cosine 0.975 on these texts,
    # 0.980 over 1,000 STS-B sentences; blocks of 128 would give 0.995 at 0.7x its speed); torch int8 keeps 0.99
    assert _min_cos(encoder.encode(texts), mmembed.load(path, device="cpu").encode(texts)) >= 0.97
    if importlib.util.find_spec(defaults.PACKAGE) is not None:
        texts = texts + ["The quick brown fox jumps over the lazy dog near the riverbank at dawn."]
        assert _min_cos(mmembed.load(backend="onnx", quantize="int8").encode(texts), mmembed.load().encode(texts)) \
            >= 0.99
