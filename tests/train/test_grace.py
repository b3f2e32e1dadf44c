"""GRACE: the reward against hand-computed values (one process and a group spread over two), the cancellation fix,
deterministic rationale-mode encoding, the data format, and the recipe under one process and DeepSpeed ZeRO-2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from support import free_port

import mmembed
from mmembed import testing
from mmembed.data.formats import DataError, read_grace
from mmembed.errors import InputError
from mmembed.rationale import GRACE_SYSTEM_PROMPT, RESTATEMENT_THRESHOLD, RationaleConfig, restatement_stats, rouge_l
from mmembed.rewards import GraceReward, GraceRewardConfig, grace_rewards, group_advantages

ROOT = Path(__file__).resolve().parents[2]


def unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


# Two groups of two rollouts in 2-d: main m, query q (one per group), negative n (one per group).
M = [unit(1, 0), unit(1, 1), unit(0, 1), unit(-1, 1)]
Q = [unit(1, 0.5)] * 2 + [unit(0, 1)] * 2
N = [unit(0, 1)] * 2 + [unit(1, 0)] * 2
G = [0, 0, 1, 1]


def hand_rewards(tau: float, wn: float, wc: float, wx: float, truncated: list[bool]) -> list[float]:
    out = []
    for i in range(4):
        mate = i ^ 1  # the other rollout of the same group
        other_query = Q[2] if G[i] == 0 else Q[0]
        positive, negative = cos(Q[i], M[i]), -cos(M[i], N[i])
        clustering, cross = cos(M[i], M[mate]), -cos(M[i], other_query)
        r = (positive + wn * negative + wc * clustering + wx * cross) / tau
        out.append(-1.0 if truncated[i] else r)
    return out


def test_rewards_match_hand_computed_values():
    config = GraceRewardConfig(temperature=0.1, negative_weight=1.0, clustering_weight=0.2, cross_group_weight=0.2)
    truncated = [False, False, True, False]
    terms = grace_rewards(torch.tensor(M), torch.tensor(Q), torch.tensor(G), torch.tensor(N),
                          torch.tensor(truncated), config)
    assert terms["reward"].tolist() == pytest.approx(hand_rewards(0.1, 1.0, 0.2, 0.2, truncated), abs=1e-5)
    # e.g. rollout 0: positive cos((1,0),(1,.5)/|.|) = 0.894427, negative -0, clustering 0.707107,
    # cross -cos((1,0),(0,1)) = 0 -> (0.894427 + 0.2 * 0.707107) / 0.1
    assert float(terms["reward"][0]) == pytest.approx((0.894427 + 0.2 * 0.707107) / 0.1, abs=1e-4)
    assert float(terms["reward"][2]) == -1.0  # cut at the limit without an end token
    other = GraceRewardConfig(temperature=0.5, negative_weight=0.5, clustering_weight=0.0, cross_group_weight=1.0,
                              truncation_reward=-2.0)
    terms = grace_rewards(torch.tensor(M) * 3, torch.tensor(Q), torch.tensor(G), torch.tensor(N),
                          torch.tensor(truncated), other)  # unnormalised inputs are normalised first
    expected = hand_rewards(0.5, 0.5, 0.0, 1.0, [False] * 4)
    expected[2] = -2.0
    assert terms["reward"].tolist() == pytest.approx(expected, abs=1e-5)
    unsupervised = grace_rewards(torch.tensor(M), torch.tensor(Q), torch.tensor(G), None, None, config)
    assert unsupervised["negative"].tolist() == [0.0] * 4
    assert unsupervised["reward"].tolist() == pytest.approx(hand_rewards(0.1, 0.0, 0.2, 0.2, [False] * 4), abs=1e-5)
    soft = GraceRewardConfig(truncation_penalty=1.5, restatement_weight=2.0)  # GRACE's weights, tau 0.1
    overlap = [0.0, 1.0, 0.5, 0.25]
    terms = grace_rewards(torch.tensor(M), torch.tensor(Q), torch.tensor(G), torch.tensor(N),
                          torch.tensor(truncated), soft, torch.tensor(overlap))
    expected = [r - 2.0 * o for r, o in zip(hand_rewards(0.1, 1.0, 0.2, 0.2, [False] * 4), overlap)]
    expected[2] -= 1.5  # cut at the limit: its own reward minus the penalty, not -1
    assert terms["reward"].tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="overlap"):
        grace_rewards(torch.tensor(M), torch.tensor(Q), torch.tensor(G), config=soft)
    short = GraceRewardConfig(min_rationale_tokens=8, short_weight=2.0)
    terms = grace_rewards(torch.tensor(M), torch.tensor(Q), torch.tensor(G), torch.tensor(N), None, short,
                          lengths=torch.tensor([2, 8, 12, 6]))
    shortfall = [6 / 8, 0.0, 0.0, 2 / 8]  # max(0, 8 - length) / 8
    expected = [r - 2.0 * f for r, f in zip(hand_rewards(0.1, 1.0, 0.2, 0.2, [False] * 4), shortfall)]
    assert terms["reward"].tolist() == pytest.approx(expected, abs=1e-5)


def test_negative_and_cross_group_terms_survive_the_group_mean():
    """GRACE's code computes -cos(q_g, n_g) and the cross-group term from the group's query: equal within a group,
    so GRPO's mean-centred advantages lose them (zero). Here both depend on each rollout's own embedding."""
    torch.manual_seed(0)
    main, groups = torch.randn(16, 8), torch.arange(4).repeat_interleave(4)
    query = torch.randn(4, 8)[groups]
    negative = torch.randn(4, 8)[groups]
    terms = grace_rewards(main, query, groups, negative)
    for name in ("negative", "cross_group"):
        advantage = group_advantages(terms[name], groups)
        assert advantage.abs().max() > 0.05, name
    # the public code's negative term: the group's query against the group's negative -> zero advantage
    public = -torch.nn.functional.cosine_similarity(query, negative, dim=-1)
    assert group_advantages(public, groups).abs().max() < 1e-6
    # and the total reward's advantages move when only the negative changes within a group
    shifted = negative.clone()
    shifted[groups == 0] = torch.randn(8)
    a = group_advantages(grace_rewards(main, query, groups, negative)["reward"], groups)
    b = group_advantages(grace_rewards(main, query, groups, shifted)["reward"], groups)
    assert (a - b)[groups == 0].abs().max() > 1e-3 and (a - b)[groups != 0].abs().max() < 1e-5


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return testing.build_tiny_qwen2(tmp_path_factory.mktemp("grace_qwen2"))


def rationale_embedder(path, max_new_tokens: int = 6):
    return mmembed.load(str(path), template=mmembed.PromptTemplate(chat=True, system=GRACE_SYSTEM_PROMPT),
                        pooling={"mode": "mean", "exclude_prefix": True}, dtype="float32", device="cpu",
                        rationale=RationaleConfig(max_new_tokens=max_new_tokens, batch_size=4))


SENTENCES = ["A man plays a guitar.", "A dog runs in the snow.", "Two kids are eating ice cream on a bench.", "Rain."]


def test_rationale_encoding_is_deterministic_alone_or_batched_and_cached(tiny_path, tmp_path):
    model = rationale_embedder(tiny_path)
    first, rationales = model.encode(SENTENCES, return_rationales=True)
    assert all(r for r in rationales)  # a rationale was generated for each input
    second = model.encode(SENTENCES, cache_rationales=False)
    assert np.array_equal(first, second)
    model.clear_rationale_cache()
    for k, sentence in enumerate(SENTENCES):  # alone (batch of one, no padding) vs in a left-padded batch
        alone, text = model.encode(sentence, return_rationales=True)
        assert text == rationales[k]
        np.testing.assert_allclose(alone, first[k], atol=1e-5)
    # the rationale is part of what is pooled: the same text without it embeds differently
    plain = mmembed.load(str(tiny_path), template=model.template, pooling={"mode": "mean", "exclude_prefix": True},
                         dtype="float32", device="cpu")
    assert np.abs(plain.encode(SENTENCES) - first).max() > 1e-3
    # the rationale setting is saved with the model
    model.save(tmp_path / "m")
    again = mmembed.load(str(tmp_path / "m"))
    assert again.rationale == model.rationale
    np.testing.assert_allclose(again.encode(SENTENCES), first, atol=1e-6)
    with pytest.raises(InputError, match="holds an image"):
        again.encode({"text": "x", "image": Image.new("RGB", (8, 8))})


# -------------------------------------------------------------------------------------------- reward object


def _completions(model, n: int) -> list[list[int]]:
    """Fixed completion ids (no end token for the last one: truncated at length 5)."""
    vocab = len(model.backbone.tokenizer)
    rng = np.random.default_rng(0)
    stop = model.backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = [rng.integers(10, vocab - 10, size=int(rng.integers(2, 5))).tolist() + [stop] for _ in range(n - 1)]
    return rows + [rng.integers(10, vocab - 10, size=5).tolist()]


CALL = {"text": ["the dog sleeps"] * 4 + ["a cat eats fish"] * 4, "group": [0] * 4 + [1] * 4,
        "query": ["a dog is sleeping"] * 4 + ["the cat is eating"] * 4, "negative": ["a dog runs"] * 4 + ["nothing"] * 4}


def test_reward_object_matches_the_formula_on_its_own_embeddings(tiny_path):
    model = rationale_embedder(tiny_path)
    reward = GraceReward(model, GraceRewardConfig(), max_completion_length=5)
    completions = _completions(model, 8)
    logged = {}
    values = reward(prompts=None, completions=None, completion_ids=completions, log_metric=logged.__setitem__, **CALL)
    ids, prefix = reward.render(CALL["text"])
    main = reward.embed([p + c for p, c in zip(ids, completions)], prefix)
    # by hand: the query's greedy rationale, appended, then pooled without the system prompt
    query = torch.tensor(model.encode(CALL["query"], cache_rationales=False))
    negative = torch.tensor(model.encode(CALL["negative"], cache_rationales=False))
    truncated = torch.tensor([False] * 7 + [True])
    expected = grace_rewards(main, query, torch.tensor(CALL["group"]), negative, truncated)
    assert values == pytest.approx(expected["reward"].tolist(), abs=1e-4)
    assert values[-1] == -1.0
    assert set(logged) == {"grace/positive", "grace/negative", "grace/clustering", "grace/cross_group",
                           "grace/truncated", "grace/rouge_l", "grace/restatement"}
    assert logged["grace/truncated"] == pytest.approx(1 / 8)
    rationales = [model.backbone.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    overlaps = [rouge_l(r, t) for r, t in zip(rationales, CALL["text"])]
    assert logged["grace/rouge_l"] == pytest.approx(np.mean(overlaps))
    assert logged["grace/restatement"] == pytest.approx(np.mean([v >= RESTATEMENT_THRESHOLD for v in overlaps]))


def test_rouge_l_and_restatement_share_by_hand():
    assert rouge_l("A man is playing a guitar", "A man is playing a guitar.") == 1.0  # an echo
    # words "the man plays music" vs "a man is playing a guitar": LCS "man" -> 2 * 1 / (4 + 6)
    assert rouge_l("<think>The man plays music</think>", "A man is playing a guitar.") == pytest.approx(0.2)
    assert rouge_l("", "text") == 0.0
    stats = restatement_stats(["A dog runs.", "It is about a dog running in snow", "Rain falls"],
                              ["A dog runs in the snow.", "A dog runs in the snow.", "Rain."])
    # ROUGE-L: 2*3/(3+6) = 0.667 (>= 0.6), "a dog in snow" 2*4/(8+6) = 0.571, "rain" 2*1/(2+1) = 0.667
    assert stats["restatement_share"] == pytest.approx(2 / 3)
    assert stats["rouge_l"] == pytest.approx((6 / 9 + 8 / 14 + 2 / 3) / 3)
    assert stats["rationale_words"] == pytest.approx((3 + 8 + 2) / 3)
    with pytest.raises(ValueError, match="one rationale per input"):
        restatement_stats(["a"], ["a", "b"])




def _reward_worker(rank: int, world: int, port: int, path: str, out: str) -> None:
    import gc

    from accelerate import Accelerator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = rationale_embedder(path)
        reward = GraceReward(model, GraceRewardConfig(), max_completion_length=5)
        reward.trainer = SimpleNamespace(accelerator=Accelerator(cpu=True), is_deepspeed_enabled=False)
        completions = _completions(model, 8)
        # each process gets half; the groups are split across the processes (rows 0-2 + 5 / 3-4 + 6-7)
        order = [0, 1, 2, 5, 3, 4, 6, 7]
        local = order[rank * 4:(rank + 1) * 4]
        values = reward(prompts=None, completions=None, completion_ids=[completions[i] for i in local],
                        **{k: [v[i] for i in local] for k, v in CALL.items()})
        gathered = [None] * world
        dist.all_gather_object(gathered, dict(zip(local, values)))
        if rank == 0:
            merged = {k: v for part in gathered for k, v in part.items()}
            Path(out).write_text(json.dumps([merged[i] for i in range(8)]))
    finally:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def test_reward_spread_over_two_processes_equals_one_process(tiny_path, tmp_path):
    out = tmp_path / "two.json"
    mp.spawn(_reward_worker, args=(2, free_port(), str(tiny_path), str(out)), nprocs=2, join=True)
    model = rationale_embedder(tiny_path)
    one = GraceReward(model, GraceRewardConfig(), max_completion_length=5)(
        prompts=None, completions=None, completion_ids=_completions(model, 8), **CALL)
    assert json.loads(out.read_text()) == pytest.approx(one, abs=1e-4)


# -------------------------------------------------------------------------------------------- data and recipe


def test_read_grace_reports_bad_lines(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"query": "q", "positive": "p", "negative": "n"}\n{"query": "q2", "positive": "p2", '
                    '"negative": "n2"}\n{"query": "q3"}\n')
    with pytest.raises(DataError, match=r"g.jsonl:3.*positive"):
        read_grace(path)
    path.write_text('{"query": "q", "positive": "p", "negative": "n"}\n{"query": "q2", "positive": "p2"}\n')
    with pytest.raises(DataError, match=r"g.jsonl:2.*negative.*g.jsonl:1"):  # every row has a negative, or none
        read_grace(path)
    path.write_text('{"query": "q", "positive": "p", "negative": "n", "source": "x"}\n')
    assert read_grace(path) == [{"text": "p", "query": "q", "negative": "n"}]


def _launch(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)


def _summary(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return json.loads([line for line in run.stdout.splitlines() if line.startswith("{\"train_seconds")][-1])


def test_recipe_one_process_saves_a_rationale_mode_embedder(tiny_path, tmp_path):
    run = _launch(["--num_processes", "1", "recipes/grace.py", "--config", "recipes/configs/grace_tiny.yaml",
                   "--model_name_or_path", str(tiny_path), "--output_dir", str(tmp_path / "out")], tmp_path)
    summary = _summary(run)
    assert summary["steps"] == 2 and (tmp_path / "out" / "reward_curve.png").stat().st_size > 1000
    history = json.loads((tmp_path / "out" / "reward_history.json").read_text())
    assert len(history) == 2 and {"positive", "negative", "clustering", "cross_group"} <= set(history[0])
    trained = mmembed.load(str(tmp_path / "out" / "final"))
    assert trained.rationale is not None and trained.pooler.get_config() == {"mode": "mean", "exclude_prefix": True}
    a, b = trained.encode(SENTENCES[:2]), trained.encode(SENTENCES[:2], cache_rationales=False)
    assert np.array_equal(a, b)


def test_recipe_two_processes_under_deepspeed_zero2(tiny_path, tmp_path):
    run = _launch(["--config_file", "ds_configs/accelerate/zero2.yaml", "recipes/grace.py", "--config",
                   "recipes/configs/grace_tiny.yaml", "--model_name_or_path", str(tiny_path),
                   "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "out")], tmp_path)
    summary = _summary(run)
    assert summary["steps"] == 2
    assert mmembed.load(str(tmp_path / "out" / "final")).rationale is not None


def test_zero3_two_processes_give_the_rewards_of_one_process(tiny_path, tmp_path):
    """Under ZeRO-3 the model loads partitioned (deepspeed.zero.Init): its first step's rollouts (sampled at a
    temperature that makes them greedy) and their reward terms equal those of one process without DeepSpeed."""
    common = ["recipes/grace.py", "--config", "recipes/configs/grace_tiny.yaml", "--model_name_or_path",
              str(tiny_path), "--max_steps", "1", "--temperature", "1e-4", "--max_train_samples", "2"]
    one = _launch(["--num_processes", "1", *common, "--per_device_train_batch_size", "8",
                   "--output_dir", str(tmp_path / "one")], tmp_path)
    two = _launch(["--config_file", "ds_configs/accelerate/zero3.yaml", *common, "--per_device_train_batch_size",
                   "4", "--output_dir", str(tmp_path / "two")], tmp_path)
    assert _summary(one)["steps"] == _summary(two)["steps"] == 1
    first, second = (json.loads((tmp_path / name / "reward_history.json").read_text())[0] for name in ("one", "two"))
    assert first.keys() == second.keys() and {"positive", "negative", "clustering", "cross_group"} <= first.keys()
    for name, value in first.items():
        assert np.isfinite(second[name]) and abs(second[name] - value) < 1e-4, (name, first, second)
    assert abs(first["cross_group"]) > 1e-3 and first["truncated"] == 1.0  # two prompts; 8 tokens never end
