"""SimCTG and contrastive search: the token contrastive loss and isotropy against explicit loops, SimCTGLoss against
the LM's own loss, contrastive search against a cache-free reference of its formula (left-padded batch, greedy at
alpha 0, EOS handling), GRACE's rationale mode with contrastive decoding, and SimCTG training raising isotropy."""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import free_port
from transformers import AutoModelForCausalLM, AutoTokenizer

import mmembed
from mmembed import testing
from mmembed.generation import contrastive_search
from mmembed.inputs import to_items
from mmembed.losses import SimCTGLoss, isotropy, token_contrastive_loss
from mmembed.rationale import GRACE_SYSTEM_PROMPT, RationaleConfig


def load_lm(path, head_scale: float = 1.0):
    """The tiny causal LM in float32, eval mode; ``head_scale`` sharpens its (near-uniform) next-token
    distribution so that both terms of contrastive search's score matter."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------------------------ losses


def padded_states():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4) + 0.8  # a shared offset: many pairs closer than the margin allows
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])  # the last row has no pair
    hidden[mask == 0] = 1e3  # padding must not count
    return hidden, mask


def hand_pairs(hidden, mask):
    """Cosines of every valid ordered pair (i != j, both real, same sequence), by explicit loops in float64."""
    h = hidden.double()
    return [cos(h[b, i], h[b, j]) for b in range(h.shape[0]) for i in range(h.shape[1]) for j in range(h.shape[1])
            if i != j and mask[b, i] and mask[b, j]]


def test_token_contrastive_loss_and_isotropy_match_explicit_loops():
    hidden, mask = padded_states()
    pairs = hand_pairs(hidden, mask)
    assert len(pairs) == 5 * 4 + 3 * 2
    for margin in (0.5, 0.2, 1.0):
        expected = sum(max(0.0, margin - 1 + c) for c in pairs) / len(pairs)
        assert float(token_contrastive_loss(hidden, mask, margin)) == pytest.approx(expected, abs=1e-6)
    assert float(token_contrastive_loss(hidden, mask, 0.5)) > 0.05  # the test exercises the hinge
    assert float(token_contrastive_loss(hidden, mask, 0.0)) == 0.0
    assert isotropy(hidden, mask) == pytest.approx(1 - sum(pairs) / len(pairs), abs=1e-12)
    # pooled over the batch, not averaged per sequence
    per_sequence = [1 - sum(hand_pairs(hidden[b:b + 1], mask[b:b + 1])) / n for b, n in ((0, 20), (1, 6))]
    assert isotropy(hidden, mask) != pytest.approx(sum(per_sequence) / 2, abs=1e-6)
    # no valid pair: zero loss (keeping the graph), and isotropy explains itself
    lone = hidden[2:].clone().requires_grad_()
    token_contrastive_loss(lone, mask[2:]).backward()
    assert lone.grad is not None and float(lone.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="two real tokens"):
        isotropy(hidden[2:], mask[2:])
    with pytest.raises(ValueError, match="margin"):
        token_contrastive_loss(hidden, mask, -0.1)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        token_contrastive_loss(hidden, mask[:, :3])


def right_padded_batch(tokenizer, texts):
    tokenizer.padding_side = "right"
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_simctg_loss_is_mle_plus_the_contrastive_term(qwen2_path):
    model = load_lm(qwen2_path)
    tokenizer = AutoTokenizer.from_pretrained(qwen2_path)
    batch = right_padded_batch(tokenizer, testing.CORPUS[:4])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        plain = SimCTGLoss(model, margin=0.0)(ids, mask)
        simctg = SimCTGLoss(model, margin=0.5)(ids, mask)
    # margin 0: exactly the LM's own loss
    assert torch.equal(plain["loss"], own.loss) and torch.equal(plain["mle"], own.loss) and float(plain["cl"]) == 0
    # margin 0.5: mle + the hinge over the last-layer states of real tokens, by hand
    pairs = hand_pairs(own.hidden_states[-1], mask)
    cl = sum(max(0.0, 0.5 - 1 + c) for c in pairs) / len(pairs)
    assert cl > 0
    assert float(simctg["cl"]) == pytest.approx(cl, abs=1e-6)
    assert float(simctg["mle"]) == pytest.approx(float(own.loss), abs=1e-6)
    assert float(simctg["loss"]) == pytest.approx(float(own.loss) + cl, abs=1e-5)
    # explicit labels are used as given
    shorter = labels.clone()
    shorter[:, :3] = -100
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=shorter).loss
        assert torch.equal(SimCTGLoss(model, margin=0.0)(ids, mask, shorter)["loss"], expected)


def train_isotropy(path, margin: float, out_dir) -> tuple[float, list[dict]]:
    """Isotropy of the corpus' last-layer states after 20 full-batch Trainer steps with ``SimCTGLoss(margin)``."""
    from transformers import Trainer, TrainingArguments  # here: the lockstep test's worker processes skip it

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = right_padded_batch(tokenizer, testing.CORPUS)
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(batch["input_ids"].tolist(),
                                                                   batch["attention_mask"].tolist())]
    args = TrainingArguments(output_dir=str(out_dir), max_steps=20, per_device_train_batch_size=len(rows),
                             learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=5, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=SimCTGLoss(model, margin), args=args, train_dataset=rows)
    trainer.train()
    model.eval()
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
    return isotropy(hidden, batch["attention_mask"]), trainer.state.log_history


def test_simctg_training_with_trainer_raises_isotropy(qwen2_path, tmp_path):
    plain, _ = train_isotropy(qwen2_path, 0.0, tmp_path / "mle")
    spread, history = train_isotropy(qwen2_path, 0.5, tmp_path / "simctg")
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert spread > plain + 0.01, (plain, spread)  # seeds 0-3 of the tiny model: +0.03 to +0.07


# ------------------------------------------------------------------------------------------ contrastive search


@pytest.fixture(scope="module")
def sharp_lm(qwen2_path):
    return load_lm(qwen2_path, head_scale=15.0)


@pytest.fixture(scope="module")
def tokenizer(qwen2_path):
    return AutoTokenizer.from_pretrained(qwen2_path)


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def reference_search(model, prompt: list[int], alpha: float, top_k: int, steps: int) -> tuple[list[int], float]:
    """The formula with no cache and no batching: a full forward of the context, then of context + each candidate,
    every step. Returns the tokens and the smallest gap between the best and second-best score seen."""
    context, out, gap = list(prompt), [], math.inf
    for _ in range(steps):
        with torch.no_grad():
            first = model(input_ids=torch.tensor([context]), output_hidden_states=True)
        probs, candidates = first.logits[0, -1].double().softmax(-1).topk(top_k)
        states = first.hidden_states[-1][0].double()
        scores = []
        for p, v in zip(probs.tolist(), candidates.tolist()):
            with torch.no_grad():
                h_v = model(input_ids=torch.tensor([context + [v]]), output_hidden_states=True).hidden_states[-1]
            penalty = max(cos(h_v[0, -1].double(), states[j]) for j in range(len(context)))
            scores.append((1 - alpha) * p - alpha * penalty)
        ranked = sorted(scores, reverse=True)
        gap = min(gap, ranked[0] - ranked[1]) if top_k > 1 else gap
        token = candidates.tolist()[int(np.argmax(scores))]
        out.append(token)
        context.append(token)
    return out, gap


PROMPTS = [[5, 17, 42, 99, 7, 63, 120], [88, 3, 250]]  # different lengths: the second is left-padded
FILL = 154  # a padding id whose states would win the penalty if padding were not excluded from the context


def test_contrastive_search_follows_the_formula_step_by_step(sharp_lm, tokenizer):
    ids, mask = left_padded(PROMPTS, FILL)
    for alpha, top_k in ((0.6, 4), (0.3, 3)):
        got = contrastive_search(sharp_lm, ids, mask, alpha=alpha, top_k=top_k, max_new_tokens=8,
                                 eos_token_id=[], pad_token_id=tokenizer.pad_token_id)
        assert got.shape == (2, 8) and got.dtype == torch.long
        for row, prompt in zip(got.tolist(), PROMPTS):
            expected, gap = reference_search(sharp_lm, prompt, alpha, top_k, 8)
            assert gap > 1e-4  # the choices are clear, so the comparison is not at the mercy of rounding
            assert row == expected
    # the penalty matters here: contrastive search departs from greedy decoding
    greedy = contrastive_search(sharp_lm, ids, mask, alpha=0.0, top_k=4, max_new_tokens=8, eos_token_id=[],
                                pad_token_id=tokenizer.pad_token_id)
    assert not torch.equal(got, greedy)


def test_alpha_zero_or_top_k_one_is_greedy_decoding(sharp_lm, tokenizer):
    pad = tokenizer.pad_token_id
    ids, mask = left_padded(PROMPTS, pad)
    eos = sharp_lm.generation_config.eos_token_id
    reference = sharp_lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=10,
                                  eos_token_id=eos, pad_token_id=pad, top_k=None, top_p=None,
                                  temperature=None)[:, ids.shape[1]:]
    for alpha, top_k in ((0.0, 4), (0.6, 1)):
        got = contrastive_search(sharp_lm, ids, mask, alpha=alpha, top_k=top_k, max_new_tokens=10,
                                 eos_token_id=eos, pad_token_id=pad)
        assert torch.equal(got, reference)


def test_rows_end_at_eos_and_are_padded_after(sharp_lm, tokenizer):
    pad = tokenizer.pad_token_id
    ids, mask = left_padded(PROMPTS, pad)
    free = contrastive_search(sharp_lm, ids, mask, max_new_tokens=8, eos_token_id=[], pad_token_id=pad).tolist()
    stop = free[0][2]  # make row 0's third token an end token
    assert pad != stop and stop not in free[0][:2]
    got = contrastive_search(sharp_lm, ids, mask, max_new_tokens=8, eos_token_id=stop, pad_token_id=pad).tolist()
    cut = [row[:row.index(stop) + 1] if stop in row else row for row in free]
    width = 8 if any(stop not in row for row in free) else max(len(c) for c in cut)
    assert got == [c + [pad] * (width - len(c)) for c in cut]
    # both rows ending stops decoding early
    both = [free[0][1], free[1][1]]
    early = contrastive_search(sharp_lm, ids, mask, max_new_tokens=8, eos_token_id=both, pad_token_id=pad)
    assert early.shape[1] == 2 and early.tolist() == [row[:early.shape[1]] for row in free]
    # the model's own EOS and pad are the defaults
    assert torch.equal(contrastive_search(sharp_lm, ids, mask, max_new_tokens=3),
                       contrastive_search(sharp_lm, ids, mask, max_new_tokens=3,
                                          eos_token_id=sharp_lm.generation_config.eos_token_id,
                                          pad_token_id=sharp_lm.generation_config.pad_token_id))


def test_contrastive_search_rejects_bad_arguments(sharp_lm, tokenizer):
    ids, mask = left_padded(PROMPTS, tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="alpha=1.5"):
        contrastive_search(sharp_lm, ids, mask, alpha=1.5)
    with pytest.raises(ValueError, match="top_k=0"):
        contrastive_search(sharp_lm, ids, mask, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        contrastive_search(sharp_lm, ids, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match="pad prompts on the left"):
        contrastive_search(sharp_lm, ids, mask.flip(1))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        contrastive_search(sharp_lm, ids, mask[:, 1:])




def _lockstep_worker(rank: int, port: int, path: str, stop: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        model = load_lm(path, head_scale=15.0)
        forwards: list[int] = []
        model.register_forward_hook(lambda *_: forwards.append(1))
        tokens = contrastive_search(model, torch.tensor([PROMPTS[rank]]), max_new_tokens=6, eos_token_id=stop,
                                    pad_token_id=0, synced_gpus=True)
        Path(out, f"{rank}.json").write_text(json.dumps({"tokens": tokens.tolist()[0], "forwards": len(forwards)}))
    finally:
        dist.destroy_process_group()


def test_synced_gpus_keeps_processes_in_lockstep(qwen2_path, sharp_lm, tmp_path):
    """Under ZeRO-3 every process must run the same forwards: a process whose rows have ended keeps stepping (its
    tokens are padding) until the other's have too."""
    ids, mask = left_padded(PROMPTS, FILL)
    free = contrastive_search(sharp_lm, ids, mask, max_new_tokens=6, eos_token_id=[], pad_token_id=0).tolist()
    stop = free[0][1]  # rank 0 ends at its second token; rank 1 runs on (it never produces that token)
    assert stop not in free[1] and stop != free[0][0]
    mp.spawn(_lockstep_worker, args=(free_port(), str(qwen2_path), stop, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["forwards"] == results[1]["forwards"] == 1 + 6
    assert results[0]["tokens"] == free[0][:2] + [0] * 4 and results[1]["tokens"] == free[1]


# ------------------------------------------------------------------------------------------------ GRACE hook


SENTENCES = ["A man plays a guitar.", "A dog runs in the snow.", "Two kids are eating ice cream on a bench.", "Rain."]


def rationale_embedder(path, rationale: RationaleConfig):
    return mmembed.load(str(path), template=mmembed.PromptTemplate(chat=True, system=GRACE_SYSTEM_PROMPT),
                        pooling={"mode": "mean", "exclude_prefix": True}, dtype="float32", device="cpu",
                        rationale=rationale)


def test_grace_contrastive_rationales_and_saved_config(qwen2_path, tmp_path):
    config = RationaleConfig(max_new_tokens=6, batch_size=4, decoding="contrastive", penalty_alpha=0.5, top_k=3)
    model = rationale_embedder(qwen2_path, config)
    embeddings, texts = model.encode(SENTENCES, return_rationales=True)
    # each rationale is what contrastive_search generates for the rendered prompt alone (no padding)
    backbone = model.backbone
    stops = [backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    prompts = backbone.tokenize_texts([backbone.renderer.render(item, model.resolve_prompt(None, None)).text
                                       for item in to_items(SENTENCES)[0]])
    ids = model.add_rationales(prompts, use_cache=False)  # batched, left-padded
    for prompt, rationale, text in zip(prompts, ids, texts):
        row = contrastive_search(backbone.model, torch.tensor([prompt]), alpha=0.5, top_k=3, max_new_tokens=6,
                                 eos_token_id=stops).tolist()[0]
        assert rationale == (row[:row.index(stops[0]) + 1] if stops[0] in row else row)
        assert backbone.tokenizer.decode(row, skip_special_tokens=True).strip() == text
    # the decoding setting matters: greedy rationales differ and embed differently
    greedy = rationale_embedder(qwen2_path, RationaleConfig(max_new_tokens=6, batch_size=4))
    greedy_embeddings, greedy_texts = greedy.encode(SENTENCES, return_rationales=True)
    assert greedy_texts != texts and np.abs(greedy_embeddings - embeddings).max() > 1e-3
    # saved and loaded with the model
    model.save(tmp_path / "m")
    again = mmembed.load(str(tmp_path / "m"))
    assert again.rationale == config
    np.testing.assert_allclose(again.encode(SENTENCES), embeddings, atol=1e-6)
    # a config saved before penalty_alpha / top_k existed still loads, with the defaults
    path = tmp_path / "m" / "mmembed_config.json"
    saved = json.loads(path.read_text())
    saved["rationale"] = {"max_new_tokens": 6, "decoding": "greedy", "batch_size": 4}
    path.write_text(json.dumps(saved))
    old = mmembed.load(str(tmp_path / "m")).rationale
    assert old == RationaleConfig(max_new_tokens=6, batch_size=4) and (old.penalty_alpha, old.top_k) == (0.6, 4)
    with pytest.raises(ValueError, match="penalty_alpha"):
        RationaleConfig(decoding="contrastive", penalty_alpha=2.0)
    with pytest.raises(ValueError, match="top_k"):
        RationaleConfig(decoding="contrastive", top_k=0)

