"""InfoNCE values, masks, and gradient caching equal to the uncached computation (text and image+text)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from support import assert_same_step, contrastive_rows, grads_of, loss_with_lora

import mmembed
from mmembed.data.collator import ContrastiveCollator
from mmembed.inputs import PromptTemplate
from mmembed.losses import InfoNCELoss
from mmembed.losses.gradcache import slice_batch, split_points


def test_info_nce_matches_the_formula_with_hard_negatives():
    torch.manual_seed(0)
    q, p, n = torch.randn(3, 8), torch.randn(3, 8), torch.randn(6, 8)
    out = InfoNCELoss(temperature=0.05)(q, p, n)
    qn, c = F.normalize(q, dim=-1), F.normalize(torch.cat([p, n]), dim=-1)
    logits = qn @ c.T / 0.05
    expected = -(logits.log_softmax(1)[torch.arange(3), torch.arange(3)]).mean()
    assert torch.allclose(out["loss"], expected, atol=1e-6)


def test_symmetric_and_multi_positive():
    torch.manual_seed(1)
    q, p = torch.randn(2, 4), torch.randn(4, 4)  # two positives per query
    out = InfoNCELoss(temperature=0.1, symmetric=True)(q, p)
    qn, pn = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    s = qn @ pn.T / 0.1
    terms = []
    for i in range(2):
        for t in range(2):
            row = s[i].clone()
            other = 2 * i + (1 - t)
            row[other] = float("-inf")
            terms.append(-row.log_softmax(0)[2 * i + t])
    q2c = torch.stack(terms).mean()
    rev = pn @ qn.T / 0.1
    c2q = F.cross_entropy(rev, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(out["loss_q2c"], q2c, atol=1e-6)
    assert torch.allclose(out["loss_c2q"], c2q, atol=1e-6)
    assert torch.allclose(out["loss"], (q2c + c2q) / 2, atol=1e-6)


def test_duplicate_keys_and_groups_are_masked():
    torch.manual_seed(2)
    q, p = torch.randn(3, 4), torch.randn(3, 4)
    keys = torch.tensor([7, 7, 9])  # positives 0 and 1 are the same text
    out = InfoNCELoss(temperature=0.05)(q, p, positive_keys=keys)
    s = F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T / 0.05
    s[0, 1] = s[1, 0] = float("-inf")
    assert torch.allclose(out["loss"], F.cross_entropy(s, torch.arange(3)), atol=1e-6)
    groups = torch.tensor([0, 0, 1])
    out = InfoNCELoss(temperature=0.05)(q, p, query_groups=groups, positive_groups=groups)
    assert torch.allclose(out["loss"], F.cross_entropy(s, torch.arange(3)), atol=1e-6)


def test_split_points_by_count_and_tokens():
    mask = torch.tensor([[1] * 4 + [0] * 4, [1] * 8, [1] * 2 + [0] * 6, [1] * 3 + [0] * 5, [1] * 8])
    assert split_points(mask, 2, None) == [0, 2, 4, 5]
    assert split_points(mask, None, 16) == [0, 2, 4, 5]  # 2 x 8 fits; 3 x 8 does not
    assert split_points(mask, None, 7) == [0, 1, 2, 4, 5]  # samples 2-3 fit (2 x 3 tokens); 8 > 7 alone


def test_gradient_caching_equals_uncached_text(qwen2_path):
    template = PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True)
    uncached = loss_with_lora(qwen2_path, template)
    batch = ContrastiveCollator(uncached.model.backbone)(contrastive_rows())
    reference = grads_of(uncached, batch)
    for kwargs in ({"mini_batch_size": 2}, {"mini_batch_tokens": 60}):
        cached = loss_with_lora(qwen2_path, template, **kwargs)
        assert_same_step(grads_of(cached, batch), reference)


def test_gradient_caching_composes_with_gradient_checkpointing(qwen2_path):
    template = PromptTemplate(chat=True)
    uncached = loss_with_lora(qwen2_path, template)
    batch = ContrastiveCollator(uncached.model.backbone)(contrastive_rows())
    reference = grads_of(uncached, batch)
    cached = loss_with_lora(qwen2_path, template, mini_batch_size=2)
    cached.gradient_checkpointing_enable()
    assert cached.model.backbone.model.get_base_model().is_gradient_checkpointing
    assert_same_step(grads_of(cached, batch), reference)


def test_gradient_caching_replays_dropout(qwen2_path, monkeypatch):
    """With dropout on, the recomputed mini-batches see the masks of the first pass: the cached gradient equals that
    of the same mini-batch forwards kept in memory (checkpointing replaced by a plain call)."""
    from mmembed.losses import gradcache

    template = PromptTemplate(chat=True)
    cached = loss_with_lora(qwen2_path, template, dropout=0.3, mini_batch_size=2)
    batch = ContrastiveCollator(cached.model.backbone)(contrastive_rows())
    result = grads_of(cached, batch)
    monkeypatch.setattr(gradcache, "checkpoint", lambda fn, *args, **kwargs: fn(*args))
    in_memory = loss_with_lora(qwen2_path, template, dropout=0.3, mini_batch_size=2)
    assert_same_step(result, grads_of(in_memory, batch))
    no_dropout = loss_with_lora(qwen2_path, template, mini_batch_size=2)
    assert not torch.allclose(grads_of(no_dropout, batch)[0], result[0])  # dropout did act


def test_gradient_caching_equals_uncached_image_text(vlm_path, images, tmp_path):
    paths = []
    for k, image in enumerate(images):
        image.save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.png"))
    template = PromptTemplate(chat=True)
    uncached = loss_with_lora(vlm_path, template)
    batch = ContrastiveCollator(uncached.model.backbone)(contrastive_rows(paths))
    assert batch["positive"]["images_per_sample"].tolist() == [1] * 6
    reference = grads_of(uncached, batch)
    cached = loss_with_lora(vlm_path, template, mini_batch_size=4)
    assert_same_step(grads_of(cached, batch), reference)


def test_slicing_a_multimodal_batch_matches_processing_the_slice(qwen2_vl_path, images):
    from mmembed.inputs import Item

    embedder = mmembed.load(str(qwen2_vl_path), template=PromptTemplate(chat=True))
    items = [Item(text="short"), Item(text="with image", image=images[0]), Item(image=images[1]),
             Item(text="two", image=images[2])]
    rendered = [embedder.backbone.renderer.render(i) for i in items]
    full = embedder.backbone.tokenize(rendered)
    full["images_per_sample"] = torch.tensor([len(r.images) for r in rendered])
    part = slice_batch(full, 1, 3)
    alone = embedder.backbone.tokenize(rendered[1:3])
    assert torch.equal(part["pixel_values"], alone["pixel_values"])
    assert torch.equal(part["image_grid_thw"], alone["image_grid_thw"])
    assert part["input_ids"].shape[0] == 2 and part["images_per_sample"].tolist() == [1, 1]


def test_only_lora_parameters_train_and_the_vision_tower_stays_frozen(qwen2_vl_path):
    loss = loss_with_lora(qwen2_vl_path, PromptTemplate(chat=True))
    trainable = [n for n, p in loss.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    visual = loss.model.backbone.model.get_base_model().visual
    assert sum(p.numel() for p in visual.parameters() if p.requires_grad) == 0


def test_collator_keeps_the_template_end_of_long_inputs(qwen2_path):
    template = PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True)
    embedder = mmembed.load(str(qwen2_path), template=template, max_length=40)
    long_text = "the quick brown fox jumps over the lazy dog " * 20
    batch = ContrastiveCollator(embedder.backbone)([{"anchor": {"text": long_text, "image": None},
                                                     "positive": {"text": "a dog", "image": None}}])
    ids = batch["anchor"]["input_ids"][0][batch["anchor"]["attention_mask"][0].bool()]
    assert len(ids) <= 40
    decoded = embedder.backbone.tokenizer.decode(ids)
    assert decoded.startswith("<|im_start|>user\nthe quick")
    assert decoded.endswith("Summarize the above text in one word:<|im_end|>\n<|im_start|>assistant\n")


def test_compiled_layers_give_the_gradients_of_eager_layers(qwen2_path):
    """``Backbone.compile_layers`` (the recipes' ``--compile_layers``) changes speed, not results: gradient-cached
    training through compiled layers gives the uncached eager loss and LoRA gradients."""
    template = PromptTemplate(chat=True)
    eager = loss_with_lora(qwen2_path, template)
    batch = ContrastiveCollator(eager.model.backbone)(contrastive_rows())
    reference = grads_of(eager, batch)
    compiled = loss_with_lora(qwen2_path, template, mini_batch_size=3)
    backbone = compiled.model.backbone
    assert backbone.compile_layers() == backbone.num_layers
    parent, name = backbone.layer_stack()
    assert all(layer._compiled_call_impl is not None for layer in getattr(parent, name))
    (loss, grads), (loss_ref, grads_ref) = grads_of(compiled, batch), reference
    assert grads.keys() == grads_ref.keys() and grads
    assert torch.allclose(loss, loss_ref, rtol=1e-5, atol=0)
    for key in grads:
        assert (grads[key] - grads_ref[key]).norm() / grads_ref[key].norm() < 1e-4, key
