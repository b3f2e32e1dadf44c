"""The SimCSE-family recipes end to end: every method learns on a fixed batch, recipes/simcse.py runs under
`accelerate launch` with two processes for every method, and recipes/multicsr_data.py with the real default
instruct model accounts for every input and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import SENTENCES

SICK = Path(__file__).resolve().parents[3] / "shared" / "data" / "sick"


def _documents(tmp_path) -> Path:
    docs = [{"sentences": SENTENCES[:3], "group": "a"}, {"sentences": SENTENCES[3:], "group": "b"},
            {"sentences": ["the river runs fast", "a boat crosses it", "fish swim below"], "group": "a"},
            {"sentences": ["snow covers the hills", "skiers go down"], "group": "b"},
            {"sentences": ["the market opens early", "traders shout prices"], "group": "a"},
            {"sentences": ["a storm is coming", "the sky turns dark"], "group": "b"}]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_multicsr_data_recipe_with_smollm2_accounts_for_every_input_and_resumes(tmp_path):
    """recipes/multicsr_data.py with the real default instruct model (SmolLM2-135M, offline wheel): every input is
    kept or counted under a reason, every kept triplet passed both stages, and a second run continues after the
    inputs the first one finished (chunk by chunk) instead of starting over."""
    import importlib.util
    import sys

    from mmembed.data.multicsr import curate

    spec = importlib.util.spec_from_file_location("multicsr_data", Path(__file__).resolve().parents[2] / "recipes"
                                                  / "multicsr_data.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["multicsr_data"] = recipe  # dataclasses look their module up
    spec.loader.exec_module(recipe)
    inputs = tmp_path / "sentences.txt"
    inputs.write_text("A man is playing a guitar.\nA woman is slicing an onion.\nTwo children are running.\n")
    out = tmp_path / "triplets.jsonl"
    common = ["--input_file", str(inputs), "--output_file", str(out), "--chunk_size", "2", "--max_new_tokens", "24"]
    first = recipe.main([*common, "--max_sentences", "2"])
    assert first["inputs"] == 2
    report = recipe.main(common)  # resumes: only the third sentence is new
    assert report["inputs"] == 3
    dropped = sum(v for k, v in report.items() if k not in ("inputs", "kept", "swapped"))
    assert report.get("kept", 0) + dropped == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == report.get("kept", 0)
    for row in rows:
        assert row["positive"] != row["negative"]
        assert curate(row["scores"]["positive"], row["scores"]["negative"], 15)


@pytest.mark.parametrize("method", ["unsup", "sup", "esimcse", "debcse", "whitened", "ccp"])
def test_every_method_learns_on_a_fixed_batch(method, qwen2_path, tmp_path):
    """Each method's rows, loss and trainer from the recipe's arguments: a few steps lower the method's own loss on
    a fixed batch (same dropout masks; the queue / bank / momentum state restored for the comparison)."""
    from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
    from mmembed.train.build import build_embedder
    from mmembed.train.methods.simcse import MethodArguments, build_method_trainer

    data = DataArguments(train_file=str(SICK), train_format="sick", max_train_samples=8)
    batch_size = 16 if method == "whitened" else 4  # whitening needs rows well above the group width
    if method == "ccp":
        data = DataArguments(train_file=str(_documents(tmp_path)), train_format="documents")
    embedder = build_embedder(ModelArguments(model_name_or_path=str(qwen2_path), template_text="{text}\nIn one word:",
                                             chat=True, lora_r=4, lora_alpha=8, lora_dropout=0.1))
    args = ContrastiveTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=batch_size,
                                        max_steps=8,
                                        learning_rate=5e-3, save_strategy="no", report_to="none", logging_steps=1,
                                        disable_tqdm=True, use_cpu=True, seed=0)
    ipw = {}
    if method == "debcse":  # thresholds where this random model's neighbour similarities lie
        from mmembed.data.formats import read_sick_triplets
        from mmembed.data.rows import sentences_of

        texts = sentences_of([read_sick_triplets(SICK)[:8]])
        vectors = torch.tensor(np.asarray(embedder.encode(texts))).reshape(len(texts), -1)
        sims = F.normalize(vectors, dim=-1) @ F.normalize(vectors, dim=-1).T
        off = sims[~torch.eye(len(texts), dtype=torch.bool)]
        ipw = {"ipw_positive_min": float(off.quantile(0.9)), "ipw_negative_max": float(off.quantile(0.5))}
        embedder.train()
    trainer = build_method_trainer(MethodArguments(method=method, whitening_groups=32, ipw_k=4, bank_size=8, **ipw),
                                   data, args, embedder)
    loss = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    state = {k: v.clone() for k, v in loss.state_dict().items() if not k.startswith("model.")}

    def fixed_loss():  # the training objective, with the same dropout masks before and after
        loss.load_state_dict(state, strict=False)
        torch.manual_seed(123)
        with torch.no_grad():
            value = float(loss(**batch)["loss"])
        loss.load_state_dict(state, strict=False)
        return value

    before = fixed_loss()
    trainer.train()
    assert trainer.state.global_step == 8
    after = fixed_loss()
    assert after < before, (method, before, after)


@pytest.mark.parametrize("method", ["unsup", "sup", "esimcse", "debcse", "whitened", "ccp"])
def test_recipe_runs_with_two_processes(method, qwen2_path, tmp_path):
    """`accelerate launch` (DDP, 2 processes, gloo) of recipes/simcse.py for every method: all gather candidates,
    and some more (reference masks, the momentum queue, whitening statistics, memory banks); the export loads and
    embeds."""
    import subprocess
    import sys

    import mmembed

    root = Path(__file__).resolve().parents[2]
    extra = {"sup": ["--false_negative_threshold", "0.95", "--hard_negative_weight", "0.5"],
             "unsup": [], "debcse": ["--ipw_positive_min", "0.5", "--ipw_negative_max", "0.5"],
             "esimcse": [], "whitened": ["--per_device_train_batch_size", "8"],
             "ccp": ["--train_format", "documents", "--train_file", str(_documents(tmp_path))]}[method]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", "ds_configs/accelerate/ddp.yaml",
           "recipes/simcse.py", "--config", "recipes/configs/simcse_tiny.yaml", "--model_name_or_path",
           str(qwen2_path), "--train_file", str(SICK), "--method", method, "--output_dir", str(tmp_path / "out"),
           *extra]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert f"'method': '{method}'" in run.stdout and "'steps': 2" in run.stdout
    assert mmembed.load(str(tmp_path / "out" / "final")).encode(["a cat", "a dog"]).shape == (2, 64)
