"""Special embedding tokens (MuCo's <|emb|>, <|mask|>): added to the tokenizer, grown embeddings, trainable rows
through PEFT's trainable tokens, and their round trip through merged and adapter-only saves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

import mmembed
from mmembed import lora
from mmembed.backbone import Backbone
from mmembed.embedder import Embedder
from mmembed.errors import AdapterMismatchError
from mmembed.inputs import PromptTemplate, to_items
from mmembed.tokens import EMB_TOKEN, MASK_TOKEN, add_special_tokens

POOLING = {"mode": "special_token", "token": EMB_TOKEN}


def conversations(images=None):
    convs = [
        [{"role": "user", "content": f"A cat {MASK_TOKEN} on the mat."}, {"role": "assistant", "content": EMB_TOKEN}],
        [{"role": "user", "content": "Two dogs run in the park."}, {"role": "assistant", "content": EMB_TOKEN},
         {"role": "user", "content": "A man is playing a guitar."}, {"role": "assistant", "content": EMB_TOKEN}],
    ]
    if images:
        convs.append([{"role": "user", "content": [{"type": "image", "image": images[0]},
                                                   {"type": "text", "text": "A cat sits on the mat."}]},
                      {"role": "assistant", "content": EMB_TOKEN}])
    return convs


def embedding_weight(backbone: Backbone) -> torch.Tensor:
    """The input embedding matrix the model uses (PEFT's trainable rows included)."""
    return lora.base_model(backbone.model).get_input_embeddings().weight.detach().clone()


@pytest.mark.parametrize("name", ["qwen2", "qwen2_vl", "llava"])
def test_add_special_tokens_grows_embeddings_with_the_mean_row(name, request):
    path = request.getfixturevalue(f"{name}_path")
    backbone = Backbone.load(str(path), dtype="float32", device="cpu")
    tokenizer = backbone.tokenizer
    old_len, old = len(tokenizer), embedding_weight(backbone)
    assert old.shape[0] == old_len and EMB_TOKEN not in tokenizer.get_vocab()
    rng = torch.get_rng_state()

    model = Embedder(backbone, "last") if name == "qwen2" else backbone  # an Embedder or a Backbone
    ids = add_special_tokens(model)

    assert ids == [old_len, old_len + 1]
    assert len(tokenizer) == old_len + 2
    assert tokenizer.convert_ids_to_tokens(ids) == [EMB_TOKEN, MASK_TOKEN]
    assert {EMB_TOKEN, MASK_TOKEN} <= set(tokenizer.all_special_tokens)
    assert tokenizer(f"a{EMB_TOKEN}b{MASK_TOKEN}", add_special_tokens=False)["input_ids"].count(ids[0]) == 1
    new = embedding_weight(backbone)
    assert new.shape == (old_len + 2, old.shape[1])
    assert backbone.config.get_text_config().vocab_size == old_len + 2
    assert torch.equal(new[:old_len], old)
    assert torch.equal(new[old_len:], old.mean(0).expand(2, -1))
    assert torch.equal(torch.get_rng_state(), rng)  # deterministic: no random init drawn

    assert add_special_tokens(model) == ids  # idempotent
    assert add_special_tokens(backbone, EMB_TOKEN) == ids[:1]
    assert len(tokenizer) == old_len + 2 and torch.equal(embedding_weight(backbone), new)
    if name == "llava":  # processors keep working with the grown vocabulary
        assert backbone.processor.tokenizer is tokenizer


def trained(path, images=None):
    """A special-token embedder with <|emb|>/<|mask|> added, LoRA + trainable rows attached, after one Adam step."""
    backbone = Backbone.load(str(path), dtype="float32", device="cpu", template=PromptTemplate(chat=True))
    old_len = len(backbone.tokenizer)
    ids = add_special_tokens(backbone)
    embedder = Embedder(backbone, POOLING)
    before = embedding_weight(backbone)
    torch.manual_seed(0)
    config = lora.lora_config(backbone.model, r=4, alpha=8, dropout=0.0, trainable_token_indices=ids)
    backbone.model = lora.attach(backbone.model, config)
    backbone.model.train()
    items, _ = to_items(conversations(images))
    batch = backbone.tokenize([backbone.renderer.render(item, "") for item in items])
    assert all(int((batch["input_ids"] == i).sum()) > 0 for i in ids)  # the loss sees both tokens
    vectors, counts = embedder(batch)
    assert counts.tolist() == [1, 2] + ([1] if images else [])
    loss = -(vectors[0] * vectors[1]).sum() + (vectors[1] * vectors[2]).sum()
    params = {n: p for n, p in backbone.model.named_parameters() if p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in params.items() if "lora_" in n}
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    backbone.model.eval()
    return embedder, ids, old_len, before, params, lora_before


@pytest.mark.parametrize("name", ["qwen2", "qwen2_vl", "llava"])
def test_only_lora_and_the_new_rows_train(name, request):
    embedder, ids, old_len, before, params, lora_before = trained(request.getfixturevalue(f"{name}_path"))
    model = embedder.backbone.model
    hidden = embedder.backbone.hidden_size

    token_params = {n: p for n, p in params.items() if "lora_" not in n}
    assert [n.rsplit(".", 2)[-2:] for n in token_params] == [["trainable_tokens_delta", "default"]]
    assert next(iter(token_params.values())).shape == (2, hidden)
    lora_count = sum(p.numel() for n, p in params.items() if "lora_" in n)
    assert lora.count_trainable(model)[0] == lora_count + 2 * hidden
    assert lora.trained_token_ids(model) == ids

    after = embedding_weight(embedder.backbone)
    assert torch.equal(after[:old_len], before[:old_len])  # every original row bit-identical
    for i in ids:
        assert not torch.equal(after[i], before[i])
    base_layer = lora.base_model(model).get_input_embeddings().token_adapter.base_layer
    assert torch.equal(base_layer.weight, before)  # the frozen matrix itself is untouched
    changed = [n for n, p in params.items() if "lora_" in n and not torch.equal(p, lora_before[n])]
    assert changed and all("lora_B" in n for n in changed)  # B starts at zero, so only B moves on step one


@pytest.mark.parametrize("name", ["qwen2", "qwen2_vl", "llava"])
def test_merged_and_adapter_only_saves_reproduce_the_trained_model(name, request, tmp_path, images):
    from transformers import AutoConfig, AutoModel

    path = request.getfixturevalue(f"{name}_path")
    vl_images = images[:1] if name != "qwen2" else None
    embedder, ids, old_len, *_ = trained(path, vl_images)
    live = embedder.encode(conversations(vl_images))
    live_weight = embedding_weight(embedder.backbone)

    # merged export: a plain model with the bigger vocabulary and the trained rows folded in
    embedder.save(tmp_path / "merged")
    assert lora.has_adapter(embedder.backbone.model)
    for options in ({}, {"pooling": POOLING}):
        merged = mmembed.load(str(tmp_path / "merged"), dtype="float32", **options)
        assert not lora.has_adapter(merged.backbone.model)
        assert merged.backbone.tokenizer.convert_tokens_to_ids([EMB_TOKEN, MASK_TOKEN]) == ids
        assert torch.equal(embedding_weight(merged.backbone), live_weight)
        out = merged.encode(conversations(vl_images))
        assert [a.shape for a in out] == [a.shape for a in live]
        assert max(np.abs(a - b).max() for a, b in zip(out, live)) < 1e-5
    plain, info = AutoModel.from_pretrained(str(tmp_path / "merged"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert plain.get_input_embeddings().weight.shape[0] == old_len + 2
    assert plain.config.get_text_config().vocab_size == old_len + 2
    assert torch.equal(plain.get_input_embeddings().weight, live_weight)

    # adapter-only save: LoRA + the two trained rows (not the whole matrix), on a base with the original vocabulary;
    # also as the trainer writes checkpoints, from a state dict
    assert AutoConfig.from_pretrained(str(path)).get_text_config().vocab_size == old_len  # the base is unchanged
    embedder.save(tmp_path / "adapter", adapter_only=True)
    embedder.save(tmp_path / "checkpoint", adapter_only=True, state_dict=embedder.backbone.model.state_dict())
    for folder in (tmp_path / "adapter", tmp_path / "checkpoint"):
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            names = f.keys()
            non_lora = [k for k in names if "lora_" not in k]
            assert len(non_lora) == 1 and non_lora[0].endswith("token_adapter.trainable_tokens_delta")
            assert torch.equal(f.get_tensor(non_lora[0]), live_weight[ids])
        assert json.loads((folder / "adapter_config.json").read_text())["trainable_token_indices"] == ids
        reloaded = mmembed.load(str(folder), dtype="float32")
        assert lora.has_adapter(reloaded.backbone.model) and lora.trained_token_ids(reloaded.backbone.model) == ids
        assert len(reloaded.backbone.tokenizer) == old_len + 2
        assert torch.equal(embedding_weight(reloaded.backbone), live_weight)
        out = reloaded.encode(conversations(vl_images))
        assert max(np.abs(a - b).max() for a, b in zip(out, live)) < 1e-5

    # the adapter alone, without the tokenizer that has the added tokens, does not fit the base: a clear error
    (tmp_path / "bare").mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp_path / "adapter" / f, tmp_path / "bare" / f)
    with pytest.raises(AdapterMismatchError, match=rf"trains token id {ids[1]}, .* only {old_len} rows"):
        mmembed.load(str(path), adapter=str(tmp_path / "bare"), pooling="last")


def test_bad_trainable_token_indices_are_named(qwen2_path):
    backbone = Backbone.load(str(qwen2_path), dtype="float32", device="cpu")
    rows = embedding_weight(backbone).shape[0]
    with pytest.raises(ValueError, match=rf"\[{rows}\] are not rows of the input embeddings .*add_special_tokens"):
        lora.lora_config(backbone.model, trainable_token_indices=[3, rows])
    backbone.model = lora.attach(backbone.model, lora.lora_config(backbone.model, r=2))
    with pytest.raises(ValueError, match="before attaching"):
        add_special_tokens(backbone)


_ZERO3_LOAD = """
import os, socket, sys
import torch
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
from transformers.integrations import HfDeepSpeedConfig
import mmembed
from mmembed.parallel import full_shape, gathered
from mmembed.tokens import add_special_tokens
deepspeed.init_distributed(dist_backend="gloo")
plain = mmembed.load(sys.argv[1], dtype="float32", device="cpu")
config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
partitioned = mmembed.load(sys.argv[1], dtype="float32", device="cpu")  # under deepspeed.zero.Init
assert partitioned.backbone.model.get_input_embeddings().weight.numel() == 0  # really partitioned
rows = []
for model in (plain, partitioned):
    add_special_tokens(model)
    weight = model.backbone.model.get_input_embeddings().weight
    with gathered([weight]):
        rows.append(weight.detach().clone())
print(tuple(full_shape(partitioned.backbone.model.get_input_embeddings().weight)), tuple(rows[0].shape),
      torch.equal(rows[0], rows[1]), bool(torch.isfinite(rows[1]).all()))
"""


def test_zero3_partitioned_load_keeps_the_embeddings_and_grows_them_like_a_plain_load(qwen2_path, tmp_path):
    """transformers loads under deepspeed.zero.Init once a ZeRO-3 config exists (GRACE's GRPOConfig): each process
    then holds empty parameter shards, which must not read as an empty vocabulary (that once filled every embedding
    row with the mean of zero rows, NaN). One gloo process, as ZeRO-3 runs on the CPU."""
    import subprocess
    import sys

    script = tmp_path / "zero3_load.py"
    script.write_text(_ZERO3_LOAD)
    run = subprocess.run([sys.executable, str(script), str(qwen2_path)], capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    vocabulary = len(mmembed.load(str(qwen2_path), device="cpu").backbone.tokenizer)
    shape = f"({vocabulary + 2}, 64)"
    assert run.stdout.strip().splitlines()[-1] == f"{shape} {shape} True True"
