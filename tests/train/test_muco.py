"""MuCo: multi-turn packing and its losses, checked against single-turn computations on a tiny Qwen2-VL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmembed
from mmembed import testing
from mmembed.data.collator import ContrastiveCollator
from mmembed.data.multiturn import (
    EMB_TOKEN,
    MASK_TOKEN,
    SYSTEM,
    AuxiliaryCollator,
    MultiTurnCollator,
    conversation,
    mask_words,
)
from mmembed.inputs import PromptTemplate
from mmembed.losses import AuxiliaryContrastiveLoss, ContrastiveLoss, InfoNCELoss, MultiTurnContrastiveLoss

POOLING = {"mode": "special_token", "token": EMB_TOKEN}


@pytest.fixture(scope="module")
def vl_path(tmp_path_factory):
    return testing.build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl_emb"), emb_token=True)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(testing.sample_images(4, size=(56, 56))):
        image.save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def load(path):
    model = mmembed.load(str(path), dtype="float32", pooling=POOLING)
    torch.manual_seed(0)
    return model


def rows_of(image_files, k):
    texts = [("what colour is it?", "red"), ("how many shapes?", "two"), ("where is it?", "on the left"),
             ("which shape?", "a circle"), ("is there a word?", "no word"), ("describe it", "two red circles")]
    return [{"image": image_files[i % len(image_files)],
             "pairs": [{"query": f"{q} ({i})", "positive": f"{t} {i}"} for q, t in texts[i % 3: i % 3 + k]]}
            for i in range(4)]


def test_one_turn_equals_single_turn_infonce(vl_path, image_files):
    """K = 1: the packed loss is single-turn InfoNCE on the same pairs (ContrastiveCollator + ContrastiveLoss)."""
    model = load(vl_path)
    rows = rows_of(image_files, 1)
    packed = MultiTurnCollator(model.backbone, shuffle_turns=False)(rows)
    multi = MultiTurnContrastiveLoss(model, InfoNCELoss(temperature=0.02))(**packed)
    model = mmembed.load(str(vl_path), dtype="float32", pooling=POOLING,
                         template=PromptTemplate(text="{text}", text_image="{image}{text}", chat=True, system=SYSTEM,
                                                 response=EMB_TOKEN))
    single_rows = [{"anchor": {"text": r["pairs"][0]["query"], "image": r["image"]},
                    "positive": {"text": r["pairs"][0]["positive"], "image": None}} for r in rows]
    single = ContrastiveCollator(model.backbone)(single_rows)
    assert torch.equal(single["anchor"]["input_ids"], packed["anchor"]["input_ids"])  # the same rendering
    reference = ContrastiveLoss(model, InfoNCELoss(temperature=0.02))(**single)
    assert float(multi["loss"]) == pytest.approx(float(reference["loss"]), abs=1e-6)


def test_turn_embeddings_equal_truncated_conversations(vl_path, image_files):
    """Causal attention: turn k's embedding in a packed conversation (batched, padded) equals the last embedding of
    the conversation cut after turn k."""
    model = load(vl_path)
    collator = MultiTurnCollator(model.backbone, shuffle_turns=False)
    rows = rows_of(image_files, 3)[:2]
    rows[1]["pairs"] = rows[1]["pairs"][:2]  # conversations of different lengths in one batch
    batch = collator(rows)
    with torch.no_grad():
        vectors, counts = model(batch["anchor"])
    assert counts.tolist() == [3, 2]
    row0 = vectors[:3]
    image = mmembed.inputs.load_image(rows[0]["image"], "test")
    for k in range(1, 4):
        turns = [(p["query"], EMB_TOKEN) for p in rows[0]["pairs"][:k]]
        alone = model.encode([conversation(turns, image)])[0]  # normalised, as the training forward
        assert alone.shape == (k, 64)
        np.testing.assert_allclose(row0[k - 1].numpy(), alone[-1], atol=1e-5)


def test_group_mask_removes_exactly_the_same_conversation_pairs():
    torch.manual_seed(0)
    q, p = torch.randn(5, 8), torch.randn(5, 8)
    groups = torch.tensor([7, 7, 7, 9, 9])
    loss = InfoNCELoss(temperature=0.1)(q, p, query_groups=groups, positive_groups=groups)["loss"]
    scores = F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T / 0.1
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(5, dtype=torch.bool)
    expected = F.cross_entropy(scores.masked_fill(same, float("-inf")), torch.arange(5))
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    # without groups the other turns count as negatives: a different (larger) loss
    assert float(InfoNCELoss(temperature=0.1)(q, p)["loss"]) > float(loss)


def test_gradient_caching_on_packed_batches_matches_uncached(vl_path, image_files):
    grads = []
    for mini in (None, 1):
        model = load(vl_path)
        model.train()
        batch = MultiTurnCollator(model.backbone, seed=3)(rows_of(image_files, 3))
        loss = MultiTurnContrastiveLoss(model, InfoNCELoss(temperature=0.02), mini_batch_size=mini)(**batch)["loss"]
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_turns_are_shuffled_together_and_truncation_is_caught(vl_path, image_files):
    model = load(vl_path)
    rows = rows_of(image_files, 3)
    collator = MultiTurnCollator(model.backbone, seed=1, max_turns=2)
    queries, _, chosen = collator.pack(rows[0])
    assert len(chosen) == 2
    pairs = {p["query"]: p["positive"] for p in rows[0]["pairs"]}
    assert all(pairs[q] == t for q, t in chosen)  # the same permutation on both sides
    user_turns = [m for m in queries if m["role"] == "user"]
    assert isinstance(user_turns[0]["content"], list) and isinstance(user_turns[1]["content"], str)  # image once
    orders = {tuple(q for q, _ in MultiTurnCollator(model.backbone, seed=s).pack(rows[0])[2]) for s in range(8)}
    assert len(orders) > 1
    batch = collator(rows)
    batch["turns"][0] += 1
    with pytest.raises(ValueError, match="query conversation 0 has 2 embedding tokens but 3 turns"):
        MultiTurnContrastiveLoss(model, InfoNCELoss())(**batch)


def test_auxiliary_loss_is_the_four_infonce_terms(vl_path, image_files):
    model = load(vl_path)
    tokenizer = model.backbone.tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]})
    model.backbone.model.resize_token_embeddings(len(tokenizer))
    rows = [{"anchor": {"text": f"find the picture {i}", "image": None, "caption": None},
             "positive": {"text": None, "image": image_files[i], "caption": f"two red circles number {i}"},
             "negative": [{"text": None, "image": image_files[(i + 1) % 4], "caption": None}]} for i in range(3)]
    batch = AuxiliaryCollator(model.backbone, seed=0)(rows)
    text = tokenizer.decode(batch["anchor"]["input_ids"][0])
    assert text.count(EMB_TOKEN) == 2 and "Please rewrite your last response" in text
    loss = AuxiliaryContrastiveLoss(model, InfoNCELoss(temperature=0.02))
    with torch.no_grad():
        out = loss(**batch)
        q, _ = model(batch["anchor"])
        p, _ = model(batch["positive"])
        n, _ = model(batch["negative"])
        info = InfoNCELoss(temperature=0.02)
        keys = {k: batch[k] for k in ("query_keys", "positive_keys", "negative_keys")}
        terms = [info(a, b, n, **keys)["loss"] for a in (q[0::2], q[1::2]) for b in (p[0::2], p[1::2])]
    assert float(out["loss"]) == pytest.approx(float(sum(terms)), abs=1e-5)
    assert float(out["loss_q_p"]) == pytest.approx(float(terms[0]), abs=1e-6)


def test_mask_words():
    rng = np.random.default_rng(0)
    outputs = [mask_words("a b c d e f", rng) for _ in range(200)]
    assert {o for o in outputs if o == MASK_TOKEN} and len(set(outputs)) > 10
    for o in outputs:
        assert f"{MASK_TOKEN} {MASK_TOKEN}" not in o  # runs collapse
        assert set(o.replace(MASK_TOKEN, " ").split()) <= set("abcdef")


def test_recipe_runs_two_steps_with_two_processes_under_zero2(tmp_path):
    """`accelerate launch recipes/muco.py` (2 processes, DeepSpeed ZeRO-2, gloo on CPU) on the synthetic multi-turn
    data; the merged export loads with its <|emb|> pooling and embeds an image with a question."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mmembed.synthetic import SyntheticConfig, generate

    root = Path(__file__).resolve().parents[2]
    model = testing.build_tiny_qwen2_vl(tmp_path / "vl")  # no <|emb|> yet: the recipe adds it
    data = generate(tmp_path / "syn", SyntheticConfig(image_size=56, n_eval_queries=4, n_train_per_task=2,
                                                      n_muco_images=64, n_mbeir_queries=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           "ds_configs/accelerate/zero2.yaml", "recipes/muco.py", "--config", "recipes/configs/muco_tiny.yaml",
           "--model_name_or_path", str(model), "--train_file", str(data / "muco"),
           "--image_root", str(data), "--output_dir", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "'steps': 2" in run.stdout
    trained = mmembed.load(str(tmp_path / "out" / "final"))
    assert trained.pooler.get_config() == POOLING
    assert trained.backbone.tokenizer.convert_tokens_to_ids(MASK_TOKEN) == len(trained.backbone.tokenizer) - 1
    image = str(next((data / "images").rglob("*.png")))
    vectors = trained.encode({"text": "What color is the star?", "image": image})  # one <|emb|>: one row
    assert vectors.shape == (1, 64) and abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-5


def test_finetune_stage_trains_on_mmeb_rows_with_captions(tmp_path):
    """The fine-tuning stage end to end (one process): MMEB-train rows with captions and a hard negative, two
    embeddings per conversation, the four-term loss decreasing over a few steps on a fixed batch."""
    from mmembed.synthetic import SyntheticConfig, generate
    from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
    from mmembed.train.methods.muco import MuCoArguments, build_muco_trainer

    data = generate(tmp_path / "syn", SyntheticConfig(image_size=56, n_eval_queries=2, n_train_per_task=4,
                                                      n_muco_images=2, n_mbeir_queries=2))
    model = testing.build_tiny_qwen2_vl(tmp_path / "vl")
    trainer = build_muco_trainer(
        ModelArguments(model_name_or_path=str(model), lora_r=4, lora_alpha=8, lora_dropout=0.0),
        DataArguments(train_file=str(data / "mmeb_train" / "Color-Cls.jsonl"), train_format="mmeb",
                      image_root=str(data)),
        ContrastiveTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6,
                                     learning_rate=5e-3, temperature=0.05, no_duplicates=False, save_strategy="no",
                                     report_to="none", logging_steps=1, disable_tqdm=True, dataloader_drop_last=True,
                                     use_cpu=True),
        MuCoArguments(stage="finetune"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"anchor", "positive", "negative"} <= set(batch)
    text = trainer.embedder.backbone.tokenizer.decode(batch["anchor"]["input_ids"][0])
    assert text.count(EMB_TOKEN) == 2 and ("<|mask|>" in text or "Image description" in text)
    loss = trainer.model
    with torch.no_grad():
        before = float(loss(**batch)["loss"])
    trainer.train()
    with torch.no_grad():
        after = float(loss(**batch)["loss"])
    assert trainer.state.global_step == 6 and after < before
