"""The pieces of the SimCSE family against hand-computed values: loss weights and masks of the InfoNCE engine,
shuffled group whitening, queues and memory banks, the view constructors, DebCSE's inverse propensity weights,
CCP's one-sided batch norm, MultiCSR's score parsing, and the gathering pieces with two processes (gloo).

On the tiny LLM with LoRA: tests/train/test_sentence_methods_lora.py; the recipes end to end:
tests/train/test_sentence_methods_recipes.py."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from support import TAU

from mmembed.data.views import context_pairs, repeat_words
from mmembed.losses import InfoNCELoss
from mmembed.losses.negatives import EmbeddingQueue, GroupedMemoryBank
from mmembed.losses.whitening import ShuffledGroupWhitening, group_whiten


def unit(rows):
    x = torch.tensor(rows, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def ce(logits_row: list[float], target: int) -> float:
    """-log softmax, by hand (float64, -inf entries dropped)."""
    finite = [v for v in logits_row if v != -math.inf]
    return -(logits_row[target] - math.log(sum(math.exp(v) for v in finite)))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    q = unit(torch.randn(3, 4).tolist())
    p = unit(torch.randn(3, 4).tolist())
    n = unit(torch.randn(3, 4).tolist())
    return q, p, n


def cos(a, b):
    return float(a @ b)


def test_hard_negative_weight_is_a_log_weight_on_the_own_negative_only(batch):
    q, p, n = batch
    w = math.log(3.0)
    out = InfoNCELoss(temperature=TAU, hard_negative_weight=w)(q, p, n, return_logits=True)
    expected = []
    for i in range(3):
        row = [cos(q[i], p[j]) / TAU for j in range(3)] + [cos(q[i], n[j]) / TAU + (w if j == i else 0.0)
                                                           for j in range(3)]
        np.testing.assert_allclose(out["logits"][i].numpy(), row, rtol=1e-6)
        expected.append(ce(row, i))
    assert float(out["loss"]) == pytest.approx(np.mean(expected), rel=1e-6)
    plain = InfoNCELoss(temperature=TAU)(q, p, n)
    assert float(plain["loss"]) != pytest.approx(float(out["loss"]))


def test_extra_negatives_are_columns_after_the_batch_with_a_per_query_mask(batch):
    q, p, _ = batch
    bank = unit([[1, 0, 0, 0], [0, 1, 0, 0]])
    exclude = torch.tensor([[False, True], [False, False], [True, True]])
    out = InfoNCELoss(temperature=TAU)(q, p, extra_negatives=bank, extra_exclude=exclude, return_logits=True)
    expected = []
    for i in range(3):
        row = [cos(q[i], p[j]) / TAU for j in range(3)]
        row += [-math.inf if exclude[i, j] else cos(q[i], bank[j]) / TAU for j in range(2)]
        np.testing.assert_allclose(out["logits"][i].numpy(), row, rtol=1e-6)
        expected.append(ce(row, i))
    assert float(out["loss"]) == pytest.approx(np.mean(expected), rel=1e-6)


def test_reference_false_negatives_are_masked_with_minus_inf_not_zero(batch):
    q, p, n = batch
    # the frozen reference model finds query 0 a paraphrase of positive 1 and of hard negative 2 (cos 0.99)
    ref_q = unit([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    ref_p = unit([[1, 0.1, 0, 0], [1, 0.1, 0, 0], [0, 0, 1, 0]])  # ref cos(q0, p0) is high too: a target, kept
    ref_n = unit([[0, 0, 0, 1], [0, 0, 0, 1], [1, 0.14, 0, 0]])
    loss = InfoNCELoss(temperature=TAU, false_negative_threshold=0.95)
    out = loss(q, p, n, reference={"queries": ref_q, "positives": ref_p, "negatives": ref_n}, return_logits=True)
    logits = out["logits"]
    assert logits[0, 1] == -math.inf and logits[0, 5] == -math.inf
    assert torch.isfinite(logits[0, 0]) and torch.isfinite(logits[1:]).all()
    rows = [[cos(q[i], c) / TAU for c in [*p, *n]] for i in range(3)]
    rows[0][1] = rows[0][5] = -math.inf
    assert float(out["loss"]) == pytest.approx(np.mean([ce(r, i) for i, r in enumerate(rows)]), rel=1e-6)
    zeroed = [list(r) for r in rows]
    zeroed[0][1] = zeroed[0][5] = 0.0  # MultiCSR's code: logit 0 instead of -inf
    assert float(out["loss"]) != pytest.approx(np.mean([ce(r, i) for i, r in enumerate(zeroed)]), rel=1e-6)


def test_group_whitening_gives_identity_covariance_per_group():
    torch.manual_seed(0)
    x = torch.randn(64, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64) + 3.0
    white = group_whiten(x, groups=4, eps=0.0)
    for g in range(4):
        block = white[:, 4 * g: 4 * g + 4]
        np.testing.assert_allclose(block.mean(0).numpy(), 0.0, atol=1e-9)
        np.testing.assert_allclose((block.T @ block / 64).numpy(), np.eye(4), atol=1e-6)
    with pytest.raises(ValueError, match="more than 16 rows"):
        group_whiten(x[:16], groups=1)


def test_shuffled_group_whitening_permutes_groups_and_restores_channel_order():
    torch.manual_seed(1)
    x = torch.randn(80, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)
    sgw = ShuffledGroupWhitening(num_groups=3, eps=0.0, seed=7)
    a, b = sgw([x, x])
    g = torch.Generator().manual_seed(7)  # the module's permutations: one per view, from its seeded generator
    perm_a, perm_b = torch.randperm(12, generator=g), torch.randperm(12, generator=g)
    assert not torch.equal(perm_a, perm_b)
    for out, perm in ((a, perm_a), (b, perm_b)):
        for group in perm.view(3, 4):  # the channels of one shuffled group are white together
            block = out[:, group]
            np.testing.assert_allclose((block.T @ block / 80).numpy(), np.eye(4), atol=1e-6)
    assert not torch.allclose(a, b)  # two views of the same rows, distorted differently
    full = ShuffledGroupWhitening(num_groups=1, eps=0.0)([x])[0]  # one group: plain ZCA, whatever the order
    np.testing.assert_allclose(full.numpy(), group_whiten(x, 1, eps=0.0).numpy(), atol=1e-8)


def test_whitening_view_transform_in_the_loss_matches_whitening_by_hand():
    torch.manual_seed(2)
    q, p = torch.randn(16, 8, dtype=torch.float64), torch.randn(32, 8, dtype=torch.float64)  # 2 positives each
    loss = InfoNCELoss(temperature=TAU, view_transform=ShuffledGroupWhitening(num_groups=2, seed=3))
    out = loss(q, p, return_logits=True)
    views = ShuffledGroupWhitening(num_groups=2, seed=3)([q, p.view(16, 2, 8)[:, 0], p.view(16, 2, 8)[:, 1]])
    wq, wp = F.normalize(views[0], dim=-1), F.normalize(torch.stack(views[1:], 1).reshape(32, 8), dim=-1)
    scores = wq @ wp.T / TAU
    expected = []
    for i in range(16):  # each positive a target of its own, the query's other positive masked
        for j in (2 * i, 2 * i + 1):
            row = scores[i].tolist()
            row[(2 * i + 1) if j == 2 * i else 2 * i] = -math.inf
            expected.append(ce(row, j))
    assert float(out["loss"]) == pytest.approx(np.mean(expected), rel=1e-6)


def test_queue_is_fifo_of_the_last_size_rows():
    queue = EmbeddingQueue(size=5, dim=1)
    assert queue.negatives() is None
    queue.push(torch.tensor([[0.0], [1.0], [2.0]]))
    assert queue.negatives().flatten().tolist() == [0, 1, 2]
    queue.push(torch.tensor([[3.0], [4.0], [5.0]]))
    assert queue.negatives().flatten().tolist() == [1, 2, 3, 4, 5]  # oldest first, 0 fell out
    queue.push(torch.arange(6.0, 13.0)[:, None])  # more than fit: only the newest 5 stay
    assert queue.negatives().flatten().tolist() == [8, 9, 10, 11, 12]
    state = queue.state_dict()  # saved with the loss: a resumed run keeps its queue
    again = EmbeddingQueue(size=5, dim=1)
    again.load_state_dict(state)
    assert again.negatives().flatten().tolist() == [8, 9, 10, 11, 12]


def test_memory_bank_gives_each_query_its_own_groups_negatives():
    bank = GroupedMemoryBank(num_groups=2, size=2, dim=1)
    bank.push(torch.tensor([[1.0], [2.0], [3.0], [10.0]]), torch.tensor([0, 0, 0, 1]))
    rows, exclude = bank.negatives(torch.tensor([1, 0]))
    assert rows.flatten().tolist() == [2, 3, 10]
    assert exclude.tolist() == [[True, True, False], [False, False, True]]
    with pytest.raises(ValueError, match="group ids"):
        bank.push(torch.tensor([[1.0]]), torch.tensor([2]))


def test_word_repetition_follows_esimcse_word_mode():
    text = "a b c d e f g h i j k l m n o p q r s t"  # 20 words: up to min(10, 20, int(0.32 * 20) = 6) - 1 repeats
    counts = set()
    for seed in range(200):
        out = repeat_words(text, random.Random(seed)).split()
        deduped = [w for i, w in enumerate(out) if i == 0 or w != out[i - 1]]
        assert deduped == text.split()
        counts.add(len(out) - 20)
    assert counts == {0, 1, 2, 3, 4, 5}
    protected = repeat_words("x <|emb|> y", random.Random(0), dup_rate=1.0, protected={"<|emb|>"})
    assert protected.split().count("<|emb|>") == 1
    assert repeat_words("", random.Random(0)) == ""


def test_context_pairs():
    rows = context_pairs([["s1", "s2", "s3"], ["t1"]], window=1, groups=[0, 1])
    assert [(r["anchor"]["text"], r["positive"]["text"], r["bank_group"]) for r in rows] == [
        ("s1", "s2", 0), ("s2", "s1", 0), ("s2", "s3", 0), ("s3", "s2", 0)]


# ------------------------------------------------------------------------------------------------ DebCSE, CCP


def test_ipw_weights_by_hand():
    from mmembed.data.debcse import ipw_weights, surface_similarity

    # bins of width 0.2: [0, 0, 2, 4, 4, 4]; shares 2/6, 1/6, 3/6 -> 1/share = 3, 3, 6, 2, 2, 2 (mean 3)
    w = ipw_weights(np.array([0.1, 0.15, 0.5, 0.9, 0.95, 1.0]), bins=5)
    np.testing.assert_allclose(w, [1, 1, 2, 2 / 3, 2 / 3, 2 / 3])
    assert surface_similarity("A cat sleeps.", "the cat sleeps") == pytest.approx(2 / 4)


def test_ipw_selection_draws_positives_by_inverse_surface_propensity():
    from mmembed.data.debcse import IPWConfig, select_pairs

    sentences = ["red apple on table", "red apple on a table", "fruit lies there", "blue sky", "blue sky today",
                 "blue sky now", "dog", "cat"]
    e = np.zeros((8, 4))
    e[0] = [1, 0, 0, 0]
    e[1] = e[2] = [0.9, np.sqrt(1 - 0.81), 0, 0]  # cos 0.9 with sentence 0
    e[3] = [0, 0, 1, 0]
    e[4] = [0, 0, 0.95, np.sqrt(1 - 0.95 ** 2)]
    e[5] = [0, 0, 0.98, np.sqrt(1 - 0.98 ** 2)]
    e[6] = [0, 1, 0, 0]
    e[7] = [0, 0.3, 0, 0.95]
    config = {"k": 3, "positive_min": 0.85, "negative_max": 0.4, "bins": 2}
    # positive pairs (cos >= 0.85) and their word overlap, bin 1 = overlap >= 0.5:
    #   0-1 / 1-0: 0.8 (bin 1); 0-2, 2-0, 1-2, 2-1: 0 (bin 0); all 6 ordered pairs of 3, 4, 5: >= 0.5 (bin 1)
    # -> bin 1 holds 8 of 12 pairs, bin 0 holds 4: weights 1 / (8/12) = 1.5 and 1 / (4/12) = 3, so anchor 0 picks
    #    sentence 2 (bin 0) with probability 3 / (3 + 1.5) = 2/3 and sentence 1 with 1/3
    picks = []
    for seed in range(600):
        triplets, pairs = select_pairs(sentences, e, IPWConfig(**config, seed=seed))
        row = next(r for r in triplets + pairs if r["anchor"]["text"] == sentences[0])
        picks.append(row["positive"]["text"])
    assert set(picks) == {sentences[1], sentences[2]}
    assert picks.count(sentences[2]) / len(picks) == pytest.approx(2 / 3, abs=0.06)
    triplets, pairs = select_pairs(sentences, e, IPWConfig(**config))
    assert {r["anchor"]["text"] for r in triplets + pairs} == set(sentences)
    for r in triplets:  # hard negatives are never above the negative threshold under the reference model
        i, j = sentences.index(r["anchor"]["text"]), sentences.index(r["negative"]["text"])
        assert e[i] @ e[j] / np.linalg.norm(e[i]) / np.linalg.norm(e[j]) <= 0.4 + 1e-9
    lonely = next(r for r in triplets + pairs if r["anchor"]["text"] == "dog")
    assert lonely["positive"]["text"] == "dog"  # no positive candidate: its own (dropout) view


def test_one_sided_batch_norm_normalises_positives_only():
    from mmembed.losses.ccp import OneSidedBatchNorm

    torch.manual_seed(0)
    q, p = torch.randn(32, 5, dtype=torch.float64) * 3 + 1, torch.randn(32, 5, dtype=torch.float64) * 2 - 4
    out_q, out_p = OneSidedBatchNorm(eps=1e-12)([q, p])
    assert torch.equal(out_q, q)
    np.testing.assert_allclose(out_p.mean(0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(out_p.var(0, unbiased=False).numpy(), 1.0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------- MultiCSR


def test_multicsr_scores_roles_and_presets_by_hand():
    from mmembed.data.multicsr import curate, first_sentence, parse_score, stage1

    assert parse_score("Score: 3.5 out of 5") == 3.5 and parse_score("4") == 4.0
    assert parse_score("7.0") is None and parse_score("no idea") is None
    assert first_sentence('\n  "A man plays music."\nmore') == "A man plays music."
    assert stage1(4.5, 1.0) == "keep" and stage1(1.0, 3.0) == "swap"
    assert stage1(4.5, 4.2) == "both scores above 4" and stage1(None, 1.0) == "unparsed score"
    assert curate(3.0, 3.0, 13) is False and curate(4.0, 2.0, 13) is True  # (4, 4, gap)
    assert curate(3.0, 3.0, 15) is False and curate(3.5, 3.0, 15) is True  # (3, 3, gap): equal scores fail
    assert curate(4.0, 3.0, 2) is True and curate(3.9, 1.0, 2) is False  # (4, 3)
    with pytest.raises(ValueError, match="filter_type"):
        curate(4.0, 1.0, 99)


# ------------------------------------------------------------------------------------- two processes (gloo)


def _configs():
    """(InfoNCELoss kwargs, forward extras) per method piece that gathers across processes."""
    return {
        "sup": ({"hard_negative_weight": math.log(2.0)}, {"negatives": True}),
        "multicsr": ({"false_negative_threshold": 0.5}, {"negatives": True, "reference": True}),
        "queue": ({}, {"queue": True}),
        "whitened": ({"view_transform": "sgw"}, {}),
        "ccp": ({"symmetric": True}, {"bank": True}),
    }


def _data():
    g = torch.Generator().manual_seed(0)
    data = {name: torch.randn(8, 6, generator=g, dtype=torch.float64) for name in ("q", "p", "n", "rq", "rp", "rn")}
    data["p2"] = torch.randn(16, 6, generator=g, dtype=torch.float64)  # two positives a query (whitened views)
    data["queue"] = torch.randn(5, 6, generator=g, dtype=torch.float64)
    data["groups"] = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    return data


def _piece_loss(name: str, data: dict, rows: slice) -> tuple[torch.Tensor, dict]:
    """Loss of the queries ``rows`` (all of them in one process, a half in each of two); returns it and the
    leaf tensors whose gradients are compared."""
    kwargs, extras = _configs()[name]
    if kwargs.get("view_transform") == "sgw":
        kwargs = {**kwargs, "view_transform": ShuffledGroupWhitening(num_groups=2, seed=5)}
    leaves = {k: data[k][rows].clone().requires_grad_(True) for k in ("q", "p", "n")}
    leaves["p2"] = data["p2"].view(8, 2, 6)[rows].reshape(-1, 6).clone().requires_grad_(True)
    loss = InfoNCELoss(temperature=TAU, **kwargs)
    args = {}
    if extras.get("reference"):
        args["reference"] = {"queries": data["rq"][rows], "positives": data["rp"][rows], "negatives": data["rn"][rows]}
    if extras.get("queue"):
        args["extra_negatives"] = data["queue"]
    if extras.get("bank"):
        bank = GroupedMemoryBank(num_groups=2, size=3, dim=6).double()
        bank.banks[0].append(data["queue"][:3])
        bank.banks[1].append(data["queue"][3:])
        args["extra_negatives"], args["extra_exclude"] = bank.negatives(data["groups"][rows])
    positives = leaves["p2"] if name == "whitened" else leaves["p"]
    negatives = leaves["n"] if extras.get("negatives") else None
    return loss(leaves["q"], positives, negatives, **args)["loss"], leaves


def _piece_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data, results = _data(), {}
        for name in _configs():
            loss, leaves = _piece_loss(name, data, slice(4 * rank, 4 * rank + 4))
            loss.backward()
            grads = {}
            for key, leaf in leaves.items():
                if leaf.grad is None:
                    continue
                parts = [torch.zeros_like(leaf.grad) for _ in range(world)]
                dist.all_gather(parts, leaf.grad)
                grads[key] = torch.cat(parts) / world  # DDP averages over processes
            losses = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
            dist.all_gather(losses, loss.detach())
            results[name] = {"loss": torch.stack(losses).mean(), "grads": grads}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_two_processes_match_one_process_for_every_gathering_piece(tmp_path):
    """Hard-negative weights, reference masks, queue and bank columns, whitening of the gathered views and the
    symmetric loss: 2 processes x 4 queries give the loss and gradients of 1 process x 8."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.pt"
    mp.spawn(_piece_worker, args=(2, port, str(out)), nprocs=2, join=True)
    two = torch.load(out)
    data = _data()
    for name in _configs():
        loss, leaves = _piece_loss(name, data, slice(0, 8))
        loss.backward()
        assert float(two[name]["loss"]) == pytest.approx(float(loss), rel=1e-9), name
        for key, grad in two[name]["grads"].items():
            np.testing.assert_allclose(grad.numpy(), leaves[key].grad.numpy(), atol=1e-10, err_msg=f"{name} {key}")
