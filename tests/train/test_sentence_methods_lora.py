"""The SimCSE-family losses on a tiny random-weight LLM with a LoRA adapter: the momentum encoder (ESimCSE) and
its queue, the identical-views warning, CCP's memory bank loss, MultiCSR's reference-masked loss and whitening
with gradient caching, each against the same computation done by hand."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import SENTENCES, TAU

from mmembed.data.views import repeat_words
from mmembed.losses import InfoNCELoss
from mmembed.losses.whitening import ShuffledGroupWhitening


def _embedder(path, dropout=0.0):
    import mmembed
    from mmembed import lora
    from mmembed.inputs import PromptTemplate

    torch.manual_seed(0)
    embedder = mmembed.load(str(path), dtype="float32", device="cpu",
                            template=PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True))
    base = embedder.backbone.model
    for p in base.parameters():
        p.requires_grad_(False)
    embedder.backbone.model = lora.attach(base, lora.lora_config(base, r=4, alpha=8, dropout=dropout,
                                                                 init_lora_weights=False))
    embedder.train()
    return embedder


def _esimcse_rows(sentences, seed):
    rng = random.Random(seed)
    return [{"anchor": {"text": s, "image": None}, "positive": {"text": repeat_words(s, rng), "image": None}}
            for s in sentences]


def test_momentum_encoder_is_an_ema_of_the_adapter_and_fills_the_queue_in_order(qwen2_path):
    from mmembed.data.collator import ContrastiveCollator
    from mmembed.losses.momentum import MomentumContrastiveLoss

    embedder = _embedder(qwen2_path)
    loss = MomentumContrastiveLoss(embedder, InfoNCELoss(temperature=TAU), queue_size=5, momentum=0.9)
    trainable = {n: p for n, p in embedder.named_parameters() if p.requires_grad}
    assert len(loss.ema.names) == len(trainable) and all("lora_" in n for n in trainable)  # adapter only
    collate = ContrastiveCollator(embedder.backbone)
    first, second = collate(_esimcse_rows(SENTENCES[:3], 0)), collate(_esimcse_rows(SENTENCES[3:], 1))

    def momentum_view(batch, params):  # the anchors embedded, dropout off, with the given adapter values
        saved = {n: p.detach().clone() for n, p in trainable.items()}
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(params[n])
            embedder.eval()
            vectors = embedder(batch)[0]
            embedder.train()
            for n, p in trainable.items():
                p.copy_(saved[n])
        return vectors

    theta0 = {n: p.detach().clone() for n, p in trainable.items()}
    out = loss(**first)
    assert float(out["queue_size"]) == 3  # the first step had no queue; its anchors are queued after the loss
    np.testing.assert_allclose(loss.queue.negatives().numpy(), momentum_view(first["anchor"], theta0).numpy(),
                               atol=1e-6)
    with torch.no_grad():  # an optimizer step
        for p in trainable.values():
            p.add_(0.05 * torch.randn_like(p))
    theta1 = {n: p.detach().clone() for n, p in trainable.items()}
    queued = loss.queue.negatives().clone()
    out = loss(**second)
    with torch.no_grad():  # the second step's loss used the first step's queue as extra negatives
        q, p = embedder(second["anchor"])[0], embedder(second["positive"])[0]
    expected = InfoNCELoss(temperature=TAU)(q, p, extra_negatives=queued)["loss"]
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)
    ema = {n: 0.9 * theta0[n] + 0.1 * theta1[n] for n in trainable}
    for i, name in enumerate(loss.ema.names):
        np.testing.assert_allclose(getattr(loss.ema, f"ema_{i}").numpy(), ema[name].numpy(), atol=1e-7)
    for n, p in trainable.items():  # the live adapter is restored after the momentum pass
        assert torch.equal(p.detach(), theta1[n])
    newest = momentum_view(second["anchor"], ema)
    fifo = torch.cat([queued, newest])[-5:]  # oldest first; the first anchor of step 1 fell out
    np.testing.assert_allclose(loss.queue.negatives().numpy(), fifo.numpy(), atol=1e-6)


def test_identical_views_warn_and_lora_dropout_makes_them_differ(qwen2_path):
    from mmembed.data.collator import ContrastiveCollator
    from mmembed.losses import ContrastiveLoss

    rows = [{"anchor": {"text": s, "image": None}, "positive": {"text": s, "image": None}} for s in SENTENCES[:4]]
    for dropout, warns in ((0.0, True), (0.1, False)):
        embedder = _embedder(qwen2_path, dropout=dropout)
        batch = ContrastiveCollator(embedder.backbone)(rows)
        loss = ContrastiveLoss(embedder, InfoNCELoss(temperature=TAU))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss(**batch)
        assert any("embed identically" in str(w.message) for w in caught) == warns


def test_memory_bank_loss_uses_the_banks_as_they_were_then_fills_them(qwen2_path):
    from mmembed.data.collator import ContrastiveCollator
    from mmembed.data.views import context_pairs
    from mmembed.losses.ccp import MemoryBankContrastiveLoss

    embedder = _embedder(qwen2_path)
    loss = MemoryBankContrastiveLoss(embedder, InfoNCELoss(temperature=TAU, symmetric=True), num_groups=2,
                                     bank_size=4)
    docs = [SENTENCES[:3], SENTENCES[3:]]
    rows = context_pairs(docs, window=1, groups=[0, 1])
    collate = ContrastiveCollator(embedder.backbone)
    first, second = collate(rows[:4]), collate(rows[4:])
    assert first["bank_groups"].tolist() == [0, 0, 0, 0] and second["bank_groups"].tolist() == [1, 1, 1, 1]
    loss(**first)
    with torch.no_grad():
        p_first = F.normalize(embedder(first["positive"])[0], dim=-1)
    rows_0, _ = loss.bank.negatives(torch.tensor([0]))
    np.testing.assert_allclose(rows_0.numpy(), p_first.numpy(), atol=1e-6)
    out = loss(**second)  # group-1 queries: the group-0 bank is masked for them, so the loss is the plain one
    with torch.no_grad():
        q, p = embedder(second["anchor"])[0], embedder(second["positive"])[0]
    plain = InfoNCELoss(temperature=TAU, symmetric=True)(q, p, query_keys=second["anchor"]["keys"],
                                                        positive_keys=second["positive"]["keys"])
    assert float(out["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-5)
    mixed = InfoNCELoss(temperature=TAU, symmetric=True)(q, p, query_keys=second["anchor"]["keys"],
                                                        positive_keys=second["positive"]["keys"],
                                                        extra_negatives=p_first)
    assert float(out["loss"]) != pytest.approx(float(mixed["loss"]), rel=1e-5)  # the other group's bank is unused


def test_reference_masked_loss_uses_the_model_without_its_adapter(qwen2_path):
    from mmembed.data.collator import ContrastiveCollator
    from mmembed.losses.reference import ReferenceMaskedLoss

    embedder = _embedder(qwen2_path)  # a non-zero adapter: the reference (adapter off) differs from the model
    rows = [{"anchor": {"text": a, "image": None}, "positive": {"text": b, "image": None},
             "negative": [{"text": c, "image": None}]}
            for a, b, c in zip(SENTENCES[:3], SENTENCES[3:], reversed(SENTENCES))]
    batch = ContrastiveCollator(embedder.backbone)(rows)
    embedder.eval()
    with torch.no_grad():
        with embedder.backbone.model.disable_adapter():
            ref = {k: embedder(batch[c])[0] for k, c in (("queries", "anchor"), ("positives", "positive"),
                                                          ("negatives", "negative"))}
        q, p, n = (embedder(batch[c])[0] for c in ("anchor", "positive", "negative"))
    assert not torch.allclose(ref["queries"], q, atol=1e-3)
    scores = F.normalize(ref["queries"], dim=-1) @ F.normalize(torch.cat([ref["positives"], ref["negatives"]]), dim=-1).T
    phi = float(scores.flatten().sort().values[10])  # some candidates above it, some below
    engine = InfoNCELoss(temperature=TAU, false_negative_threshold=phi)
    loss = ReferenceMaskedLoss(embedder, engine, mask_duplicates=False)
    out = loss(**batch)
    expected = engine(q, p, n, reference=ref, return_logits=True)
    assert float(out["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-5)
    masked = torch.isinf(expected["logits"])
    targets = torch.eye(3, 6, dtype=torch.bool)
    assert torch.equal(masked, (scores > phi) & ~targets) and masked.any()


def test_whitening_composes_with_gradient_caching(qwen2_path):
    """WhitenedCSE's statistics are those of the full batch also when the embeddings come from gradient-cached
    mini-batches: the loss and the adapter gradients equal the uncached ones."""
    from mmembed.data.collator import ContrastiveCollator
    from mmembed.losses import ContrastiveLoss

    rows = [{"anchor": {"text": s, "image": None}, "positive": [{"text": s, "image": None}] * 2}
            for s in SENTENCES]
    results = []
    for mini_batch_size in (None, 2):
        embedder = _embedder(qwen2_path)
        embedder.eval()  # no dropout: the two runs see the same views
        loss = ContrastiveLoss(embedder, InfoNCELoss(temperature=TAU, view_transform=ShuffledGroupWhitening(
            num_groups=32, seed=1)), mini_batch_size=mini_batch_size)
        batch = ContrastiveCollator(embedder.backbone)(rows)
        out = loss(**batch)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}
        results.append((float(out["loss"]), grads))
    (uncached, g0), (cached, g1) = results
    assert cached == pytest.approx(uncached, rel=1e-5) and g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6)
