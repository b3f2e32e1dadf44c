"""DefSent+: entries from WordNet-style definitions, the entry-embedding builder and its ICA step, the entry
classification loss against hand-computed values, and the staged recipe end to end on a tiny random model."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmembed.data.collator import ContrastiveCollator
from mmembed.data.definitions import definition_dataset, definition_rows, read_entries
from mmembed.data.formats import DataError
from mmembed.losses import EntryClassificationLoss
from mmembed.losses.defsent import entry_embeddings, entry_matrix, ica_transform

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_TEXT = "{text}\nSummarize the above text in one word:"  # recipes/configs/defsent_tiny.yaml

SYNSETS = [
    {"synset": "1-n", "pos": "n", "lemmas": ["bank"], "definition": "sloping land beside a body of water"},
    {"synset": "2-n", "pos": "n", "lemmas": ["bank", "depository financial institution"],
     "definition": "a financial institution that accepts  deposits"},
    {"synset": "3-v", "pos": "v", "lemmas": ["bank"], "definition": "do business with a bank"},
    {"synset": "4-n", "pos": "n", "lemmas": ["river"], "definition": "a large natural stream of water"},
    {"synset": "5-n", "pos": "n", "lemmas": ["river", "stream"], "definition": "a natural body of running water"},
    {"synset": "6-n", "pos": "n", "lemmas": ["stream"], "definition": "dominant course of opinion"},
    {"synset": "7-n", "pos": "n", "lemmas": ["cat", "true cat"], "definition": "a small domesticated feline"},
    {"synset": "8-n", "pos": "n", "lemmas": ["cat"], "definition": "a spiteful woman gossip"},
    {"synset": "9-v", "pos": "v", "lemmas": ["run"], "definition": "move fast by using the legs"},
    {"synset": "10-v", "pos": "v", "lemmas": ["run"], "definition": "be in charge of a business"},
    {"synset": "11-n", "pos": "n", "lemmas": ["sun"], "definition": "the star that is the source of light"},
    {"synset": "12-n", "pos": "n", "lemmas": ["sun"], "definition": "the rays of the star as a heat source"},
]


def _definitions_file(tmp_path: Path, synsets: list[dict] = SYNSETS) -> Path:
    path = tmp_path / "definitions.jsonl"
    path.write_text("".join(json.dumps({**s, "examples": []}) + "\n" for s in synsets))
    return path


def _embedder(path, lora_r: int | None = None):
    import mmembed
    from mmembed.inputs import PromptTemplate
    from mmembed.train.arguments import ModelArguments
    from mmembed.train.build import build_embedder

    if lora_r is None:
        return mmembed.load(str(path), template=PromptTemplate(text=TEMPLATE_TEXT, chat=True), pooling="last")
    torch.manual_seed(0)
    return build_embedder(ModelArguments(model_name_or_path=str(path), template_text=TEMPLATE_TEXT, chat=True,
                                         lora_r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0))


# ------------------------------------------------------------------------------------------------ entries


def test_entries_group_every_synset_definition_under_each_of_its_lemmas(tmp_path):
    path = _definitions_file(tmp_path)
    entries = read_entries(path)
    by_name = {e.name: e.definitions for e in entries}
    assert [e.name for e in entries] == ["bank", "depository financial institution", "river", "stream", "cat",
                                         "true cat", "run", "sun"]  # first-seen order, multi-word entries kept
    assert by_name["bank"] == ("sloping land beside a body of water", "a financial institution that accepts deposits",
                               "do business with a bank")  # both parts of speech; whitespace normalised
    assert by_name["stream"] == ("a natural body of running water", "dominant course of opinion")
    assert by_name["true cat"] == ("a small domesticated feline",)
    assert [e.name for e in read_entries(path, min_definitions=3)] == ["bank"]
    rows = definition_rows(entries[:2])
    assert rows[3] == {"anchor": {"text": "a financial institution that accepts deposits", "image": None}, "entry": 1}
    assert len(rows) == 4 and [r["entry"] for r in rows] == [0, 0, 0, 1]
    dataset = definition_dataset(entries)
    assert len(dataset) == sum(len(e.definitions) for e in entries) and "keys" in dataset.column_names


def test_entry_sample_is_seeded_in_file_order_and_bad_lines_name_their_place(tmp_path):
    path = _definitions_file(tmp_path)
    names = [e.name for e in read_entries(path)]
    sample = [e.name for e in read_entries(path, max_entries=4, seed=3)]
    assert sample == [e.name for e in read_entries(path, max_entries=4, seed=3)]
    assert len(sample) == 4 and sample == [n for n in names if n in sample]  # a subset, in file order
    assert any([e.name for e in read_entries(path, max_entries=4, seed=s)] != sample for s in range(4, 8))
    lines = path.read_text().splitlines()
    for bad, message in [('{"lemmas": ["x"], "definition": ', "invalid JSON"),
                         ('{"lemmas": [], "definition": "d"}', "'lemmas' must be a non-empty list"),
                         ('{"lemmas": ["x"], "definition": "  "}', "'definition' must be a non-empty string")]:
        broken = tmp_path / "broken.jsonl"
        broken.write_text("\n".join([*lines[:2], bad, *lines[2:]]) + "\n")
        with pytest.raises(DataError, match=rf"broken.jsonl:3: {message}"):
            read_entries(broken)
    with pytest.raises(DataError, match="lower min_definitions"):
        read_entries(path, min_definitions=9)


# ------------------------------------------------------------------------------------------------ targets


def test_entry_embeddings_are_the_means_of_each_entrys_encoded_definitions(qwen2_path, tmp_path):
    entries = read_entries(_definitions_file(tmp_path))
    embedder = _embedder(qwen2_path)
    matrix = entry_embeddings(embedder, entries, batch_size=3)
    assert matrix.shape == (len(entries), 64) and matrix.dtype == torch.float32
    for i, entry in enumerate(entries):  # each definition alone (no batching), raw pooled vectors
        alone = np.stack([embedder.encode([d], normalize=False)[0] for d in entry.definitions])
        np.testing.assert_allclose(matrix[i].numpy(), alone.mean(0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(matrix.norm(dim=1).numpy(), 1.0)  # not normalised (the paper averages raw vectors)
    unit = entry_embeddings(embedder, entries, normalize=True)
    cat = np.stack([embedder.encode([d])[0] for d in entries[4].definitions]).mean(0)  # "cat": unit vectors
    np.testing.assert_allclose(unit[4].numpy(), cat, rtol=1e-4, atol=1e-5)


def test_ica_whitens_and_recovers_independent_sources():
    rng = np.random.default_rng(0)
    n = 4000
    sources = np.stack([rng.uniform(-1, 1, n), rng.laplace(size=n), rng.exponential(size=n) - 1,
                        np.sign(rng.standard_normal(n)) * rng.uniform(0.5, 1, n)], axis=1)
    mixing = rng.standard_normal((4, 4))
    x = sources @ mixing.T * np.array([1.0, 10.0, 0.1, 3.0]) + 5.0
    out = ica_transform(x).double().numpy()
    assert out.shape == (n, 4)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.cov(out.T, bias=True) / 100.0**2, np.eye(4), atol=1e-3)  # x100, unit variance
    corr = np.abs(np.corrcoef(out.T, sources.T)[:4, 4:])  # each output is one source, up to sign
    assert sorted(corr.argmax(1).tolist()) == [0, 1, 2, 3] and corr.max(1).min() > 0.98
    np.testing.assert_array_equal(out, ica_transform(x).double().numpy())  # seeded (42)
    with pytest.raises(ValueError, match="more entries than dimensions"):
        ica_transform(x[:4])


# ------------------------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_loss_is_the_cross_entropy_of_the_definitions_against_every_entry(similarity, qwen2_path, tmp_path):
    entries = read_entries(_definitions_file(tmp_path))
    embedder = _embedder(qwen2_path).eval()
    torch.manual_seed(1)
    targets = torch.randn(len(entries), 64) * (0.05 if similarity == "dot" else 1.0)
    loss = EntryClassificationLoss(embedder, targets, similarity=similarity, temperature=0.1)
    rows = definition_rows(entries)[::2]
    batch = ContrastiveCollator(embedder.backbone)(rows)
    assert set(batch) == {"anchor", "entry_ids"}
    with torch.no_grad():
        out = loss(**batch)
    assert set(out) == {"loss", "accuracy"}
    h = embedder.encode([r["anchor"]["text"] for r in rows], normalize=similarity == "cosine").astype(np.float64)
    e = targets.double().numpy()
    if similarity == "cosine":
        logits = h @ (e / np.linalg.norm(e, axis=1, keepdims=True)).T / 0.1
    else:
        logits = h @ e.T  # raw pooled vectors, no temperature: the paper's score
    expected = [-(row[r["entry"]] - math.log(sum(math.exp(v) for v in row))) for row, r in zip(logits, rows)]
    assert float(out["loss"]) == pytest.approx(np.mean(expected), rel=1e-4)
    hits = [int(np.argmax(row)) == r["entry"] for row, r in zip(logits, rows)]
    assert float(out["accuracy"]) == pytest.approx(np.mean(hits))
    with pytest.raises(ValueError, match="build the rows and the matrix from the same entries"):
        loss(anchor=batch["anchor"], entry_ids=batch["entry_ids"] + len(entries))
    with pytest.raises(ValueError, match="dimensions"):
        EntryClassificationLoss(embedder, torch.randn(3, 32))


def test_targets_stay_frozen_and_unsaved_while_training_lowers_the_loss(qwen2_path, tmp_path):
    from mmembed.train.arguments import ContrastiveTrainingArguments
    from mmembed.train.trainer import LOSS_WEIGHTS, EmbeddingTrainer

    # entries whose definitions are theirs alone (a definition shared by two entries caps the accuracy)
    entries = [e for e in read_entries(_definitions_file(tmp_path), min_definitions=2) if e.name != "stream"]
    embedder = _embedder(qwen2_path, lora_r=4)
    targets = entry_matrix(embedder, entries)
    loss = EntryClassificationLoss(embedder, targets)
    frozen = loss.entry_embeddings.clone()
    assert "entry_embeddings" not in loss.state_dict()
    assert not loss.entry_embeddings.requires_grad
    assert all(p is not loss.entry_embeddings for p in loss.parameters())
    collator = ContrastiveCollator(embedder.backbone)
    batch = collator(definition_rows(entries))  # every definition: the fixed batch

    def fixed():
        with torch.no_grad():
            out = loss(**batch)
        return float(out["loss"]), float(out["accuracy"])

    before = fixed()
    args = ContrastiveTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=32,
                                        learning_rate=5e-3, save_strategy="no", report_to="none", logging_steps=1,
                                        disable_tqdm=True, use_cpu=True, seed=0)
    trainer = EmbeddingTrainer(model=loss, args=args, train_dataset=definition_dataset(entries),
                               data_collator=collator)
    trainer.train()
    assert trainer.state.global_step == 32
    assert any("accuracy" in log for log in trainer.state.log_history)
    after = fixed()
    assert after[0] < before[0] and after[1] > before[1], (before, after)
    assert loss.entry_embeddings.grad is None and torch.equal(loss.entry_embeddings, frozen)
    trainer.save_model(str(tmp_path / "saved"))
    saved = tmp_path / "saved"
    assert (saved / "adapter_model.safetensors").is_file()
    assert not (saved / LOSS_WEIGHTS).exists() or "entry_embeddings" not in load_file(str(saved / LOSS_WEIGHTS))


# ------------------------------------------------------------------------------------------------ the recipe


def _sts_file(tmp_path: Path) -> Path:
    pairs = [("a cat sits on the mat", "a cat is sitting on a mat", 4.8), ("a man plays guitar", "a dog runs", 0.2),
             ("the river is wide", "the stream is broad", 3.9), ("she cooks rice", "a woman is cooking", 3.1),
             ("the sun is hot", "it snows in winter", 0.8), ("kids play football", "children play soccer", 4.5)]
    path = tmp_path / "sts-dev.csv"
    path.write_text("".join(f"main\tx\t2012\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(pairs)))
    return path


def test_staged_recipe_rebuilds_targets_with_the_previous_stage_and_restarts_from_the_initial_model(
        qwen2_path, tmp_path):
    import mmembed

    definitions, out = _definitions_file(tmp_path), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "recipes/defsent.py", "--config", "recipes/configs/defsent_tiny.yaml",
           "--model_name_or_path", str(qwen2_path), "--train_file", str(definitions), "--max_entries", "5",
           "--min_definitions", "2",
           "--output_dir", str(out), "--eval_sts_file", str(_sts_file(tmp_path)), "--eval_before_training", "true"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    result = ast.literal_eval(next(ln for ln in reversed(run.stdout.splitlines()) if ln.startswith("{'method'")))
    assert result["method"] == "defsent" and result["steps"] == 2 and result["stages"] == 2
    assert result["entries"] == 5 and len(result["sts_spearman_stages"]) == 2
    assert {"sts_spearman_before", "sts_spearman", "train_seconds"} <= set(result)
    assert result["sts_spearman"] == result["sts_spearman_stages"][-1]

    entries = read_entries(definitions, max_entries=5, min_definitions=2, seed=42)  # the recipe's sample (seed: the config's)
    assert [e["name"] for e in json.loads((out / "entries.json").read_text())] == [e.name for e in entries]
    stages = json.loads((out / "stages.json").read_text())
    initial, stage1 = _embedder(qwen2_path), mmembed.load(str(out / "stage1" / "final"))
    probe = [m.encode("a dictionary definition of a word") for m in (initial, stage1)]
    # every stage started from the initial model (not from stage 1's), which stage 1 did change
    for record in stages:
        np.testing.assert_allclose(record["start_probe"], probe[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(probe[1], probe[0], rtol=1e-5, atol=1e-6)
    # stage 1's targets come from the initial model, stage 2's from the model stage 1 exported
    saved = [load_file(str(out / f"stage{k}" / "entry_embeddings.safetensors"))["entry_embeddings"] for k in (1, 2)]
    torch.testing.assert_close(saved[0], entry_matrix(initial, entries), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(saved[1], entry_matrix(stage1, entries), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(saved[0], saved[1], rtol=1e-4, atol=1e-5)
    assert [r["targets_from"] for r in stages] == ["initial model", str(out / "stage1" / "final")]
    assert mmembed.load(str(out / "final")).encode(["a cat", "a dog"]).shape == (2, 64)
    assert not (out / "stage2" / "final").exists()

    # run again into the same folder: refused (exit code 2, one line) before anything is replaced
    card = (out / "README.md").read_text()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.splitlines()[-1] == (
        f"error: {out} holds the output of an earlier run (final, stage1/final), with no checkpoint a run can resume "
        f"from: start over with a new --output_dir or with --overwrite_output_dir true (which deletes those folders "
        f"and its model card README.md).")
    assert (out / "README.md").read_text() == card and (out / "final" / "mmembed_config.json").is_file()



def test_defsent_refuses_the_contrastive_options_it_has_no_use_for(tmp_path):
    """DefSent+ classifies against frozen entry embeddings with a fixed temperature: ``symmetric`` and
    ``learnable_temperature`` were parsed and silently dropped; now the run stops at once with one line naming
    them (before any model or entry is loaded)."""
    from mmembed.errors import ConfigError
    from mmembed.train.methods.runner import run_method

    base = ["--train_file", str(_definitions_file(tmp_path)), "--output_dir", str(tmp_path / "out"), "--report_to",
            "none"]
    with pytest.raises(ConfigError) as error:
        run_method("defsent", [*base, "--symmetric", "true", "--learnable_temperature", "true"])
    assert str(error.value) == ("defsent classifies definitions against frozen entry embeddings with a fixed "
                                "temperature: symmetric and learnable_temperature have no meaning there; remove them "
                                "(or set false).")
    with pytest.raises(ConfigError, match=r"temperature: symmetric has no meaning there; remove it \(or set false\)"):
        run_method("defsent", [*base, "--symmetric", "true"])
    assert not (tmp_path / "out" / "entries.json").exists()
