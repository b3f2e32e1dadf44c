"""Elastic embeddings: early exit at inference, and the 2D Matryoshka / Starbucks loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import lora_embedder

import mmembed
from mmembed import testing
from mmembed.data.collator import ContrastiveCollator
from mmembed.losses import ContrastiveLoss, InfoNCELoss
from mmembed.losses.elastic import ElasticLoss, geometric_dims, starbucks_pairs

TEXTS = ["A man is playing a guitar.", "Two dogs run in the park.", "hi", "The sun sets over a calm sea tonight."]
ROWS = [("a man is playing a guitar", "someone plays an instrument", "a man is eating"),
        ("two dogs run in the park", "dogs are running outside", "a cat sleeps indoors"),
        ("the sun sets over the sea", "evening falls on the ocean", "it is noon in the city"),
        ("a woman slices an onion", "someone cuts a vegetable", "a woman is singing")]


@pytest.fixture(scope="module")
def deep_path(tmp_path_factory):
    return testing.build_tiny_qwen2(tmp_path_factory.mktemp("qwen2_6"), num_layers=6)


def _layer_calls(embedder):
    parent, name = embedder.backbone.layer_stack()
    calls: list[int] = []
    hooks = [layer.register_forward_hook(lambda *_, i=i: calls.append(i))
             for i, layer in enumerate(getattr(parent, name))]
    return calls, hooks


def test_starbucks_pairs_scale_the_paper_list():
    assert starbucks_pairs(12, 768) == [(2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768)]
    assert starbucks_pairs(30, 576) == [(5, 24), (10, 48), (15, 96), (20, 192), (25, 384), (30, 576)]
    assert geometric_dims(64) == [8, 16, 32]


@pytest.mark.parametrize("layer", [1, 3, -2])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_early_exit_runs_l_layers_and_equals_layer_l_of_the_full_pass(deep_path, layer, pooling):
    from transformers import AutoModel, AutoTokenizer

    model = mmembed.load(str(deep_path), layer=layer, dim=16, pooling=pooling, normalize=False, dtype="float32")
    count = layer if layer > 0 else 7 + layer
    calls, hooks = _layer_calls(model)
    ours = model.encode(TEXTS, batch_size=2)
    for h in hooks:
        h.remove()
    assert sorted(set(calls)) == list(range(count))  # only the first L layers ran
    assert ours.shape == (len(TEXTS), 16)
    parent, name = model.backbone.layer_stack()
    assert len(getattr(parent, name)) == 6  # the model keeps all its layers

    tokenizer = AutoTokenizer.from_pretrained(deep_path)
    base = AutoModel.from_pretrained(deep_path, dtype=torch.float32)
    for text, vector in zip(TEXTS, ours):
        with torch.no_grad():
            out = base(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)
            states = base.norm(out.hidden_states[count][0])
        ref = states[-1] if pooling == "last" else states.mean(0)
        assert np.abs(vector - ref[:16].numpy()).max() < 1e-5


def test_early_exit_with_a_cached_prompt_equals_the_uncached_one(deep_path):
    model = mmembed.load(str(deep_path), layer=2, pooling="last", dtype="float32")
    cached = model.encode(TEXTS, prompt="Query: ", batch_size=2, cache_prompt=True)
    plain = model.encode(TEXTS, prompt="Query: ", batch_size=2, cache_prompt=False)
    assert np.abs(cached - plain).max() < 1e-5


def test_early_exit_of_a_vlm_cuts_the_language_model(vlm_path, images):
    model = mmembed.load(str(vlm_path), layer=1, pooling="last", normalize=False, dtype="float32")
    parent, name = model.backbone.layer_stack()
    stack = getattr(parent, name)
    text_config = model.backbone.config.get_text_config()
    assert len(stack) == text_config.num_hidden_layers
    assert stack[0].self_attn.q_proj.in_features == text_config.hidden_size  # the LM's layers, not the vision tower's
    inputs = [{"text": "a cat", "image": images[0]}, "a caption"]
    early = model.encode(inputs)
    model.backbone.layer = -1  # the full pass, pooled at layer 1 by hand
    batch = model.backbone.tokenize([model.backbone.renderer.render(mmembed.inputs.to_item(x, i), "")
                                     for i, x in enumerate(inputs)])
    with torch.no_grad():
        out = model.backbone.body(model.backbone.model)(**model.backbone.model_inputs(batch),
                                                        output_hidden_states=True)
        states = model.backbone.final_norm()(out.hidden_states[1])
        ref = model.pooler(states, batch)[0]
    assert np.abs(early - ref.numpy()).max() < 1e-4


def _embedder(path):
    embedder = lora_embedder(path, pooling="mean")
    embedder.train()
    return embedder


def _batch(embedder, negatives=True):
    rows = [{"anchor": {"text": a, "image": None}, "positive": {"text": p, "image": None},
             **({"negative": [{"text": n, "image": None}]} if negatives else {})} for a, p, n in ROWS]
    return ContrastiveCollator(embedder.backbone)(rows)


def _grads(embedder):
    return {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("negatives", [True, False])
def test_starbucks_loss_is_the_weighted_sum_of_per_pair_losses_and_kl(deep_path, negatives):
    embedder = _embedder(deep_path)
    batch = _batch(embedder, negatives)
    engine = InfoNCELoss(temperature=0.05, hard_negative_weight=0.5)
    pairs = [(2, 16), (4, 32), (6, 64), (3, 64)]
    elastic = ElasticLoss(embedder, engine, pairs=pairs, kl_weight=0.7, kl_temperature=0.3)
    out = elastic(**batch)
    out["loss"].backward()
    grads = _grads(embedder)
    embedder.zero_grad()

    # by hand: the ordinary path at each (layer, dim), through early exit and Matryoshka truncation
    plain = ContrastiveLoss(embedder, engine)
    columns = ["anchor", "positive"] + (["negative"] if negatives else [])
    embedder.normalize = False
    full = [embedder(batch[c])[0] for c in columns]
    total = plain(**batch)["loss"]  # the full model, weight 1
    expected_parts = {}
    for layer, dim in pairs[:2] + pairs[3:]:  # (6, 64) is the full model: counted once
        embedder.backbone.layer, embedder.truncate_dim = layer, dim
        part = plain(**batch)["loss"]
        sub = [embedder(batch[c])[0] for c in columns]
        p_full = F.softmax(F.normalize(torch.cat(full)[:, :dim], dim=-1) / 0.3, dim=-1)
        p_sub = F.softmax(F.normalize(torch.cat(sub), dim=-1) / 0.3, dim=-1)
        kl = (p_full * (p_full.log() - p_sub.log())).sum(-1).mean() * 0.3
        total = total + part + 0.7 * kl
        expected_parts[f"loss_{layer}x{dim}"] = float(part.detach())
        expected_parts[f"kl_{layer}x{dim}"] = float(kl.detach())
    embedder.backbone.layer, embedder.truncate_dim = -1, None
    total.backward()
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-5)
    for key, value in expected_parts.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-4, abs=1e-7)
    for name, grad in _grads(embedder).items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5)


def test_2dmse_draws_its_pairs_from_the_step_counter(deep_path):
    embedder = _embedder(deep_path)
    loss = ElasticLoss(embedder, InfoNCELoss(), mode="random", seed=3)
    assert loss.layer_weight == "inverse" and loss.weight(2) == 0.5 and loss.weight(6) == 1.0
    drawn = []
    for step in range(8):
        loss.step.fill_(step)
        pairs = loss.step_pairs()
        layer, width = pairs[-1]
        assert pairs == [(layer, 64), (6, width), (layer, width)]
        assert 1 <= layer <= 5 and width in (8, 16, 32)
        drawn.append(pairs)
    assert len({tuple(p) for p in drawn}) > 2
    again = ElasticLoss(embedder, InfoNCELoss(), mode="random", seed=3)
    again.step.fill_(5)
    assert again.step_pairs() == drawn[5]  # a resumed run (step restored) draws the same pairs
    batch = _batch(embedder, negatives=False)
    loss.step.fill_(5)
    loss(**batch)
    assert int(loss.step) == 6
    with pytest.raises(ValueError, match="outside the model"):
        ElasticLoss(embedder, InfoNCELoss(), pairs=[(7, 16)])


def test_starbucks_training_improves_every_cut(deep_path):
    embedder = _embedder(deep_path)
    batch = _batch(embedder)
    loss = ElasticLoss(embedder, InfoNCELoss(temperature=0.05), pairs=[(2, 16), (4, 32)])
    optimizer = torch.optim.AdamW([p for p in embedder.parameters() if p.requires_grad], lr=5e-3)
    first = None
    for _ in range(10):
        out = loss(**batch)
        first = first or {k: float(v) for k, v in out.items() if k.startswith("loss")}
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    last = {k: float(v) for k, v in loss(**batch).items() if k.startswith("loss")}
    for key in ("loss_full", "loss_2x16", "loss_4x32"):
        assert last[key] < 0.7 * first[key], (key, first[key], last[key])


def test_elastic_recipe_with_two_processes_exports_a_model_that_loads_cut(qwen2_path, tmp_path):
    """`accelerate launch` (DDP, 2 processes) of recipes/simcse.py with ``--elastic starbucks``: the sub-model
    losses are logged, and the export loads with ``layer=1, dim=16`` (early exit) as the first layer's pooled state."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", "ds_configs/accelerate/ddp.yaml",
           "recipes/simcse.py", "--config", "recipes/configs/simcse_tiny.yaml", "--model_name_or_path",
           str(qwen2_path), "--train_file", str(root.parent / "shared" / "data" / "sick"), "--method", "sup",
           "--elastic", "starbucks", "--output_dir", str(tmp_path / "out"), "--save_strategy", "steps",
           "--save_steps", "2"]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    history = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert "'steps': 2" in run.stdout and "loss_1x11" in history[0]  # the full log dict (stdout: one short line)
    cut = mmembed.load(str(tmp_path / "out" / "final"), layer=1, dim=16, normalize=False)
    full = mmembed.load(str(tmp_path / "out" / "final"), normalize=False)
    batch = full.backbone.tokenize([full.backbone.renderer.render(mmembed.inputs.to_item("a cat", 0), "")])
    with torch.no_grad():
        ref = full.pooled_layers(batch, [1])[0][0, :16]
    assert np.abs(cut.encode("a cat") - ref.numpy()).max() < 1e-5
