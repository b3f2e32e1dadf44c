"""Poolers: exact positions on hand-made masks, and padding-side / batching invariance on real tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmembed
from mmembed.inputs import PromptTemplate
from mmembed.pooling import LastTokenPooler, MeanPooler, Pooler, SpecialTokenPooler, first_positions, last_positions

SENTENCES = ["A man is playing a guitar.", "hi", "The stock market fell sharply in the morning session today.",
             "Two dogs run in the park.", "a"]


def test_positions_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_positions(mask).tolist() == [2, 4, 4, 1]
    assert first_positions(mask).tolist() == [0, 2, 0, 1]


def test_mean_pooler_exact_values_and_prefix_exclusion():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # row0: 0..3, row1: 4..7
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]), "prefix_lengths": torch.tensor([1, 2])}
    full, counts = MeanPooler()(hidden, batch)
    assert full.squeeze(-1).tolist() == [1.0, 6.0] and counts.tolist() == [1, 1]
    excl, _ = MeanPooler(exclude_prefix=True)(hidden, batch)
    assert excl.squeeze(-1).tolist() == [1.5, 7.0]  # row0 keeps tokens 1,2; row1 keeps token 3 only


def test_special_token_pooler_returns_every_occurrence():
    pooler = SpecialTokenPooler("<e>")
    pooler.token_id = 9
    hidden = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    batch = {"input_ids": torch.tensor([[1, 9, 2, 9, 0], [0, 3, 9, 4, 5]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])}
    vectors, counts = pooler(hidden, batch)
    assert counts.tolist() == [2, 1] and vectors.squeeze(-1).tolist() == [1.0, 3.0, 7.0]


def test_pooler_config_round_trip(tmp_path):
    for pooler in (LastTokenPooler(), MeanPooler(exclude_prefix=True), SpecialTokenPooler("<|emb|>")):
        pooler.save(tmp_path / pooler.mode)
        assert Pooler.load(tmp_path / pooler.mode).get_config() == pooler.get_config()
    with pytest.raises(ValueError, match="unknown pooling mode"):
        Pooler.from_config("max")


def _encode_with_side(path, side, pooling, template=None, inputs=SENTENCES, **kw):
    model = mmembed.load(str(path), pooling=pooling, padding_side=side, dtype="float32", template=template)
    return model.encode(inputs, batch_size=8, **kw)


POOLINGS = ["last", "mean", {"mode": "mean", "exclude_prefix": True}]


@pytest.mark.parametrize("pooling", POOLINGS, ids=["last", "mean", "mean-excl-prefix"])
def test_left_and_right_padding_agree_text_model(qwen2_path, pooling):
    template = PromptTemplate(chat=True, system="You embed text.")
    left = _encode_with_side(qwen2_path, "left", pooling, template, prompt="Query: ")
    right = _encode_with_side(qwen2_path, "right", pooling, template, prompt="Query: ")
    assert np.abs(left - right).max() < 1e-5


@pytest.mark.parametrize("pooling", POOLINGS, ids=["last", "mean", "mean-excl-prefix"])
def test_left_and_right_padding_agree_vlm(vlm_path, images, pooling):
    inputs = SENTENCES[:3] + [images[0], {"text": "a red square", "image": images[1]},
                              {"text": "a much longer caption for the second picture", "image": images[2]}]
    template = PromptTemplate(chat=True)
    left = _encode_with_side(vlm_path, "left", pooling, template, inputs)
    right = _encode_with_side(vlm_path, "right", pooling, template, inputs)
    assert np.abs(left - right).max() < 1e-5


@pytest.mark.parametrize("side", ["left", "right"])
def test_alone_and_in_mixed_batch_agree(qwen2_path, side):
    model = mmembed.load(str(qwen2_path), padding_side=side, dtype="float32")
    batch = model.encode(SENTENCES, batch_size=len(SENTENCES))
    for i, sentence in enumerate(SENTENCES):
        assert np.abs(model.encode(sentence) - batch[i]).max() < 1e-4


def test_last_token_pooling_matches_manual_forward(qwen2_path):
    """Reference computation: a plain transformers forward of each sentence alone, state of its last token."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen2_path)
    base = AutoModel.from_pretrained(qwen2_path, dtype=torch.float32)
    model = mmembed.load(str(qwen2_path), pooling="last", normalize=False, dtype="float32")
    ours = model.encode(SENTENCES)
    for i, sentence in enumerate(SENTENCES):
        with torch.no_grad():
            ref = base(**tokenizer(sentence, return_tensors="pt")).last_hidden_state[0, -1]
        assert np.abs(ours[i] - ref.numpy()).max() < 1e-5


def test_mean_excluding_prefix_drops_exactly_the_prompt_tokens(qwen2_path):
    """Reference: mean over the states of the text tokens only, from a forward of prompt+text."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen2_path)
    base = AutoModel.from_pretrained(qwen2_path, dtype=torch.float32)
    model = mmembed.load(str(qwen2_path), pooling={"mode": "mean", "exclude_prefix": True}, normalize=False,
                         dtype="float32")
    prompt = "Instruct: Retrieve semantically similar text.\n"  # ends in a newline: a clean token boundary
    ours = model.encode(SENTENCES[:3], prompt=prompt)
    k = len(tokenizer(prompt).input_ids)
    for i, sentence in enumerate(SENTENCES[:3]):
        with torch.no_grad():
            states = base(**tokenizer(prompt + sentence, return_tensors="pt")).last_hidden_state[0]
        assert np.abs(ours[i] - states[k:].mean(0).numpy()).max() < 1e-5


def test_several_emb_tokens_give_one_embedding_each_at_the_right_positions(qwen2_emb_path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen2_emb_path)
    base = AutoModel.from_pretrained(qwen2_emb_path, dtype=torch.float32)
    model = mmembed.load(str(qwen2_emb_path), pooling={"mode": "special_token", "token": "<|emb|>"},
                         normalize=False, dtype="float32")
    conversation = [
        {"role": "user", "content": "A cat sits on the mat."}, {"role": "assistant", "content": "<|emb|>"},
        {"role": "user", "content": "Two dogs run."}, {"role": "assistant", "content": "<|emb|>"},
        {"role": "user", "content": "the quick brown fox"}, {"role": "assistant", "content": "<|emb|>"},
    ]
    single = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<|emb|>"}]
    out = model.encode([conversation, single])
    assert [o.shape for o in out] == [(3, 64), (1, 64)]
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_tensors="pt", return_dict=True)
    emb_id = tokenizer.convert_tokens_to_ids("<|emb|>")
    positions = (ids["input_ids"][0] == emb_id).nonzero().flatten()
    assert len(positions) == 3
    with torch.no_grad():
        states = base(**ids).last_hidden_state[0]
    assert np.abs(out[0] - states[positions].numpy()).max() < 1e-5


def test_intermediate_layer_passes_the_final_norm(qwen2_path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen2_path)
    base = AutoModel.from_pretrained(qwen2_path, dtype=torch.float32)
    model = mmembed.load(str(qwen2_path), layer=1, pooling="last", normalize=False, dtype="float32")
    ours = model.encode("A man is playing a guitar.")
    with torch.no_grad():
        out = base(**tokenizer("A man is playing a guitar.", return_tensors="pt"), output_hidden_states=True)
        ref = base.norm(out.hidden_states[1][0, -1])
    assert np.abs(ours - ref.numpy()).max() < 1e-5
    full = mmembed.load(str(qwen2_path), layer=-1, pooling="last", normalize=False, dtype="float32")
    assert np.abs(full.encode("A man is playing a guitar.") - ours).max() > 1e-3


def test_truncate_dim_then_normalize(qwen2_path):
    model = mmembed.load(str(qwen2_path), dtype="float32")
    full = model.encode(SENTENCES, normalize=False)
    short = model.encode(SENTENCES, truncate_dim=16)
    ref = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    assert short.shape == (len(SENTENCES), 16) and np.abs(short - ref).max() < 1e-6


@pytest.mark.parametrize("pooling", ["last", {"mode": "mean", "exclude_prefix": True}], ids=["last", "mean-excl"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_shared_prompt_cache_equals_full_computation(qwen2_path, pooling, side):
    template = PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True,
                              system="You are a helpful assistant.")
    model = mmembed.load(str(qwen2_path), template=template, pooling=pooling, padding_side=side, dtype="float32")
    items = [mmembed.inputs.to_item(s, 0) for s in SENTENCES]
    plan = model._plan(items, [model.backbone.renderer.render(x, "Query: ") for x in items], "Query: ", 8, None,
                       cache_prompt=True)
    assert plan[0].prefix is not None and len(plan[0].prefix) > 5 and sum(len(p.indices) for p in plan) == 5
    cached = model.encode(SENTENCES, prompt="Query: ", batch_size=2)
    full = model.encode(SENTENCES, prompt="Query: ", batch_size=2, cache_prompt=False)
    assert np.abs(cached - full).max() < 1e-5
    plain = mmembed.load(str(qwen2_path), pooling=pooling, padding_side=side, dtype="float32")
    items = [mmembed.inputs.to_item(s, 0) for s in SENTENCES]
    prompt = "Instruct: Retrieve semantically similar text.\nQuery: "  # its trailing space merges with the text
    plan = plain._plan(items, [plain.backbone.renderer.render(x, prompt) for x in items], prompt, 8, None, True)
    assert plan[0].prefix is not None and sum(len(p.indices) for p in plan if p.prefix is not None) == 5
    cached = plain.encode(SENTENCES, prompt=prompt)
    full = plain.encode(SENTENCES, prompt=prompt, cache_prompt=False)
    assert np.abs(cached - full).max() < 1e-5


def test_long_text_is_shortened_so_the_template_suffix_survives(qwen2_path):
    template = PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True)
    model = mmembed.load(str(qwen2_path), template=template, max_length=40, dtype="float32", normalize=False)
    long_text = "the quick brown fox jumps over the lazy dog " * 20
    items = [mmembed.inputs.to_item(long_text, 0)]
    rendered = [model.backbone.renderer.render(items[0])]
    plan = model._plan(items, rendered, "", 8, None, cache_prompt=False)
    ids = plan[0].ids[0]
    assert len(ids) <= 40
    decoded = model.backbone.tokenizer.decode(ids)
    assert decoded.endswith("\nSummarize the above text in one word:<|im_end|>\n<|im_start|>assistant\n")
    assert rendered[0].text.startswith("<|im_start|>user\nthe quick brown fox")
    # a plain template keeps the head, exactly like sentence-transformers' tail truncation
    plain = mmembed.load(str(qwen2_path), max_length=12, dtype="float32")
    full = plain.backbone.tokenize_texts([long_text])[0]
    items = [mmembed.inputs.to_item(long_text, 0)]
    plan = plain._plan(items, [plain.backbone.renderer.render(items[0])], "", 8, None, cache_prompt=False)
    assert plan[0].ids[0] == full[:12]
