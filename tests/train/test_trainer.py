"""The trainer: a resumed run reproduces the uninterrupted one; the LCO recipe under every accelerate config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

import mmembed
from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from mmembed.train.methods.contrastive import build_trainer

ROOT = Path(__file__).resolve().parents[2]
SICK = ROOT.parent / "shared" / "data" / "sick"
pytestmark = pytest.mark.skipif(not SICK.is_dir(), reason="needs ../shared/data/sick")


def _args(output_dir, **overrides) -> ContrastiveTrainingArguments:
    values = {"output_dir": str(output_dir), "per_device_train_batch_size": 4, "max_steps": 4, "learning_rate": 1e-3,
              "logging_steps": 1, "save_strategy": "steps", "save_steps": 2, "seed": 0, "disable_tqdm": True,
              "temperature": 0.05, "mini_batch_size": 2}
    values.update(overrides)
    return ContrastiveTrainingArguments(**values)


def _losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_resumed_run_reproduces_the_uninterrupted_losses(qwen2_path, tmp_path):
    model_args = ModelArguments(model_name_or_path=str(qwen2_path), lora_r=4, lora_alpha=8, lora_dropout=0.1,
                                chat=True, template_text="{text}\nSummarize the above text in one word:")
    data_args = DataArguments(train_file=str(SICK), train_format="sick", max_train_samples=48)
    full = build_trainer(model_args, data_args, _args(tmp_path / "full"))
    full.train()
    reference = _losses(full)
    assert len(reference) == 4 and reference[4] != reference[1]
    resumed = build_trainer(model_args, data_args, _args(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    again = _losses(resumed)  # steps 1-2 come from the checkpoint's history, 3-4 are computed again
    assert again.keys() == {1, 2, 3, 4}
    for step in (3, 4):
        assert again[step] == pytest.approx(reference[step], rel=1e-5)
    # resuming a finished run (max_steps is not an epoch boundary here) loads the last checkpoint and trains nothing
    final = tmp_path / "full" / "checkpoint-4"
    done = build_trainer(model_args, data_args, _args(tmp_path / "full"))
    done.train(resume_from_checkpoint=str(final))
    assert done.state.global_step == 4 and not (tmp_path / "full" / "checkpoint-5").exists()
    expected = load_file(str(final / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(done.embedder.backbone.model)
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(loaded[k].cpu(), expected[k]) for k in expected)
    # a checkpoint is an mmembed folder (adapter only) that mmembed.load reads
    assert (tmp_path / "full" / "checkpoint-2" / "adapter_config.json").is_file()
    mmembed.load(str(tmp_path / "full" / "checkpoint-2")).encode("a cat")


CONFIGS = ["single", "ddp", "zero2", "zero3"]


@pytest.mark.parametrize("config", CONFIGS)
def test_lco_recipe_runs_under_each_accelerate_config(qwen2_path, tmp_path, config):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", f"ds_configs/accelerate/{config}.yaml", "recipes/lco.py",
           "--config", "recipes/configs/lco_tiny.yaml", "--model_name_or_path", str(qwen2_path),
           "--output_dir", str(tmp_path / "out"), "--train_file", str(SICK)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "'steps': 2" in run.stdout
    model = mmembed.load(str(tmp_path / "out" / "final"))
    assert model.encode(["a cat", "a dog"]).shape == (2, 64)


def test_a_mixture_of_files_trains_one_dataset_per_batch(qwen2_path, tmp_path):
    import json

    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(
            {"anchor": f"{name} query {i}", "positive": f"{name} document {i}"}) for i in range(12)))
    model_args = ModelArguments(model_name_or_path=str(qwen2_path), lora_r=4, lora_alpha=8)
    data_args = DataArguments(train_file=f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}", train_format="pairs",
                              dataset_weights=[1.0, 3.0])
    trainer = build_trainer(model_args, data_args, _args(tmp_path / "out", max_steps=2, save_strategy="no"))
    seen = []
    for batch in trainer.get_train_dataloader():
        texts = trainer.data_collator.backbone.tokenizer.batch_decode(batch["anchor"]["input_ids"],
                                                                       skip_special_tokens=True)
        seen.append({t.strip()[0] for t in texts})
    assert len(seen) == 6 and all(len(s) == 1 for s in seen)
    trainer.train()
    assert trainer.state.global_step == 2
