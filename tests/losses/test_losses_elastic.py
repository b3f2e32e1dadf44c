"""ElasticLoss wraps any embedding loss, the stateful ones included (ESimCSE's momentum queue, CCP's memory banks,
MultiCSR's reference masks): at the full pair it is the unwrapped loss, its state is written once a step with the
full model's vectors, each sub-model reads that state cut to its width, and training lowers a sub-model's loss."""

from __future__ import annotations

import pytest
import torch
from support import lora_embedder

from mmembed.data.collator import ContrastiveCollator
from mmembed.errors import ConfigError
from mmembed.losses import ContrastiveLoss, InfoNCELoss
from mmembed.losses.ccp import MemoryBankContrastiveLoss
from mmembed.losses.elastic import ElasticLoss
from mmembed.losses.momentum import MomentumContrastiveLoss
from mmembed.losses.reference import ReferenceMaskedLoss
from mmembed.train.elastic import ElasticArguments, make_elastic

TAU = 0.05
ROWS = [("a man is playing a guitar", "someone plays an instrument", "a man is eating"),
        ("two dogs run in the park", "dogs are running outside", "a cat sleeps indoors"),
        ("the sun sets over the sea", "evening falls on the ocean", "it is noon in the city"),
        ("a woman slices an onion", "someone cuts a vegetable", "a woman is singing"),
        ("children are playing football", "kids play a ball game", "an old man reads"),
        ("a cat sleeps on the sofa", "a pet naps on the couch", "a dog barks loudly")]
KINDS = ["momentum", "bank", "reference"]
SUB = (1, 16)  # the tiny Qwen2 has 2 layers of width 64


def _embedder(path):
    embedder = lora_embedder(path, pooling="mean")
    embedder.train()
    return embedder


def _loss(kind, embedder):
    if kind == "momentum":
        return MomentumContrastiveLoss(embedder, InfoNCELoss(temperature=TAU), queue_size=4, momentum=0.9)
    if kind == "bank":
        return MemoryBankContrastiveLoss(embedder, InfoNCELoss(temperature=TAU, symmetric=True), num_groups=2,
                                         bank_size=4)
    return ReferenceMaskedLoss(embedder, InfoNCELoss(temperature=TAU, false_negative_threshold=0.4))


def _batches(kind, embedder):
    """Two batches of three rows (with a hard negative, and CCP's bank groups for the memory bank)."""
    rows = [{"anchor": {"text": a, "image": None}, "positive": {"text": p, "image": None},
             "negative": [{"text": n, "image": None}], **({"bank_group": i % 2} if kind == "bank" else {})}
            for i, (a, p, n) in enumerate(ROWS)]
    collate = ContrastiveCollator(embedder.backbone)
    return collate(rows[:3]), collate(rows[3:])


def _state(loss):
    return {k: v.detach().clone() for k, v in loss.state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_wrapped_stateful_loss_at_the_full_pair_is_the_unwrapped_loss_and_writes_its_state_once(qwen2_path, kind):
    """Formerly refused by make_elastic ("keeps state per step"): the full pair's loss and the state after the step
    equal the unwrapped loss's, whatever the sub-model passes read."""
    embedder = _embedder(qwen2_path)
    loss = _loss(kind, embedder)
    first, second = _batches(kind, embedder)
    loss(**first)  # the queue / banks hold the first step's vectors
    before = _state(loss)
    plain = loss(**second)
    after_plain = _state(loss)
    loss.load_state_dict(before)
    out = ElasticLoss(loss, pairs=[SUB], kl_weight=0.5)(**second)
    assert set(out) == {"loss", "loss_full", "accuracy", "loss_1x16", "kl_1x16"}
    assert float(out["loss_full"]) == pytest.approx(float(plain["loss"]), rel=1e-5)
    assert float(out["accuracy"]) == float(plain["accuracy"])
    after = _state(loss)
    assert after.keys() == after_plain.keys()
    for key, value in after_plain.items():  # one EMA update, one push of full-width vectors
        torch.testing.assert_close(after[key], value, rtol=1e-4, atol=1e-6, msg=key)
    loss.load_state_dict(before)
    with torch.no_grad():
        read_only = ElasticLoss(loss, pairs=[SUB], kl_weight=0.5).eval()(**second)
    # the sub-model's pass in training read the state as it was before the step's push
    assert float(out["loss_1x16"]) == pytest.approx(float(read_only["loss_1x16"]), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_sub_model_pass_reads_the_state_cut_to_its_width(qwen2_path, kind):
    """At (1 layer, 16 dims): the queue / banks' first 16 dimensions are the extra negatives (as the unwrapped loss
    on the cut model reads them), and the reference masks are the full reference model's."""
    embedder = _embedder(qwen2_path)
    loss = _loss(kind, embedder)
    first, second = _batches(kind, embedder)
    loss(**first)
    elastic = ElasticLoss(loss, pairs=[SUB]).eval()
    with torch.no_grad():
        out = elastic(**second)
        if kind == "reference":
            reference = {key: loss.reference_embed(second[column]) for key, column in
                         (("queries", "anchor"), ("positives", "positive"), ("negatives", "negative"))}
        embedder.backbone.layer, embedder.truncate_dim = SUB
        if kind == "reference":
            q, p, n = (embedder(second[c])[0] for c in ("anchor", "positive", "negative"))
            keys = loss.content_keys(second["anchor"], second["positive"], second["negative"])
            expected = loss.info_nce(q, p, n, **keys, reference=reference)["loss"]
            assert float(expected) != pytest.approx(float(loss.info_nce(q, p, n, **keys)["loss"]), rel=1e-3)
        else:
            expected = loss(**second)["loss"]  # eval: reads the state, cut to the 16 dimensions, writes nothing
        embedder.backbone.layer, embedder.truncate_dim = -1, None
    assert float(out["loss_1x16"]) == pytest.approx(float(expected), rel=1e-5)
    extra = {"momentum": lambda: loss.queue.negatives(), "bank": lambda: loss.bank.negatives(torch.tensor([0]))[0]}
    if kind in extra:
        assert extra[kind]().shape[1] == 64  # the state keeps the full width


@pytest.mark.parametrize("kind", KINDS)
def test_training_with_a_wrapped_stateful_loss_lowers_the_sub_model_loss(qwen2_path, kind):
    embedder = _embedder(qwen2_path)
    loss = _loss(kind, embedder)
    elastic = make_elastic(loss, ElasticArguments(elastic="starbucks", elastic_layers=[1, 2], elastic_dims=[16, 64]))
    assert isinstance(elastic, ElasticLoss) and elastic.loss is loss and elastic.model is embedder
    batch, _ = _batches(kind, embedder)
    optimizer = torch.optim.AdamW([p for p in elastic.parameters() if p.requires_grad], lr=5e-3)

    def step():
        out = elastic(**batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()

    def sub_loss():
        elastic.eval()
        with torch.no_grad():
            value = float(elastic(**batch)["loss_1x16"])
        elastic.train()
        return value

    step()  # fills the queue / banks
    first = sub_loss()
    for _ in range(10):
        step()
    last = sub_loss()
    assert last < 0.7 * first, (first, last)
    if kind == "momentum":
        assert int(loss.queue.count) == 3 * 11  # one push a step, not one per pair
    if kind == "bank":
        assert sum(int(bank.count) for bank in loss.bank.banks) == 3 * 11


def test_wrapper_saves_its_state_under_the_unwrapped_names(qwen2_path):
    """Checkpoints keep their layout: the Embedder under ``model.``, the engine / queue under their names, plus
    ``step`` (as the former ElasticLoss, which held the Embedder and the engine itself)."""
    embedder = _embedder(qwen2_path)
    plain = ContrastiveLoss(embedder, InfoNCELoss(learnable_temperature=True))
    assert set(ElasticLoss(plain).state_dict()) == set(plain.state_dict()) | {"step"}
    legacy = ElasticLoss(embedder, InfoNCELoss(learnable_temperature=True))  # an Embedder: the plain loss
    assert set(legacy.state_dict()) == set(plain.state_dict()) | {"step"}
    momentum = _loss("momentum", embedder)
    wrapped = ElasticLoss(momentum)
    assert set(wrapped.state_dict()) == set(momentum.state_dict()) | {"step"}
    assert {n for n, _ in wrapped.named_parameters()} == {n for n, _ in momentum.named_parameters()}
    assert not wrapped.eval().loss.training and wrapped.train().loss.training


def test_make_elastic_refuses_gradient_caching(qwen2_path):
    embedder = _embedder(qwen2_path)
    args = ElasticArguments(elastic="2dmse")
    with pytest.raises(ConfigError, match="drop mini_batch_size / mini_batch_tokens"):
        make_elastic(ContrastiveLoss(embedder, mini_batch_size=2), args)
    loss = ContrastiveLoss(embedder)
    assert make_elastic(loss, ElasticArguments()) is loss
    with pytest.raises(ValueError, match="give info_nce to the wrapped loss"):
        ElasticLoss(loss, InfoNCELoss())
