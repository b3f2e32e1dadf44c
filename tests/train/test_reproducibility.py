"""One seed fixes a run; a run takes exactly max_steps; a resumed run is the uninterrupted run (1 and 2 processes,
across an epoch boundary where a batch was dropped); the output folder is never silently overwritten."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from trl import TrlParser

from mmembed.data.dataset import to_dataset
from mmembed.data.samplers import NoDuplicatesBatchSampler
from mmembed.errors import DataError, RunStateError
from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
from mmembed.train.build import build_embedder
from mmembed.train.methods.contrastive import build_trainer
from mmembed.train.run import parse_recipe_args

ROOT = Path(__file__).resolve().parents[2]
SICK = ROOT.parent / "shared" / "data" / "sick"
needs_sick = pytest.mark.skipif(not SICK.is_dir(), reason="needs ../shared/data/sick")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
# The first 24 SICK triplets in batches of 4 with seed 10: epoch 0 cannot form its 6th batch from the rows left
# (they repeat a sentence), so the old sampler yielded 5 batches while saying 6. The tests check this is so.
ROWS, BATCH, SEED = 24, 4, 10
TEMPLATE = "{text}\nSummarize the above text in one word:"


def _sick_keys() -> list[list[int]]:
    from mmembed.data.formats import read_sick_triplets

    return to_dataset(read_sick_triplets(str(SICK))[:ROWS])["keys"]


def _check_epoch(sampler: NoDuplicatesBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler) and all(len(b) == sampler.batch_size for b in batches)
    for batch in batches:
        keys = [k for i in batch for k in sampler.keys[i]]
        assert len(keys) == len(set(keys)), f"a repeated input in a batch of epoch {epoch}"
    return batches


def test_no_duplicates_sampler_yields_len_batches_every_epoch():
    # 5 distinct anchors: many rows wait, and greedy passes run short of full batches
    rows = [{"anchor": {"text": f"a{i % 5}", "image": None}, "positive": {"text": f"p{i}", "image": None}}
            for i in range(42)]
    sampler = NoDuplicatesBatchSampler(to_dataset(rows)["keys"], batch_size=4, seed=3)
    assert len(sampler) == 10
    epochs = [_check_epoch(sampler, e) for e in range(4)]
    assert any(max(Counter(i for b in batches for i in b).values()) > 1 for batches in epochs)  # a filled epoch
    again = NoDuplicatesBatchSampler(to_dataset(rows)["keys"], batch_size=4, seed=3)
    assert [_check_epoch(again, e) for e in range(4)] == epochs  # a function of (seed, epoch)
    assert epochs[0] != epochs[1]
    few = [{"anchor": {"text": f"a{i % 3}", "image": None}, "positive": {"text": "p", "image": None}}
           for i in range(12)]
    with pytest.raises(DataError, match="no batch of 4 training rows without a repeated input"):
        list(NoDuplicatesBatchSampler(to_dataset(few)["keys"], batch_size=4))


@needs_sick
def test_the_test_data_drops_a_batch_in_epoch_0():
    sampler = NoDuplicatesBatchSampler(_sick_keys(), BATCH, seed=SEED)
    first = _check_epoch(sampler, 0)
    assert len(first) == ROWS // BATCH == 6
    # a row used twice: the rows left could not complete the last batch, which was filled from a further permutation
    assert max(Counter(i for b in first for i in b).values()) == 2
    assert max(Counter(i for b in _check_epoch(sampler, 1) for i in b).values()) == 1


def _model_args(path) -> ModelArguments:
    return ModelArguments(model_name_or_path=str(path), lora_r=4, lora_alpha=8, lora_dropout=0.1, chat=True,
                          template_text=TEMPLATE)


def _training_args(output_dir, **overrides) -> ContrastiveTrainingArguments:
    values = {"output_dir": str(output_dir), "per_device_train_batch_size": BATCH, "max_steps": 12,
              "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "steps", "save_steps": 1, "seed": SEED,
              "disable_tqdm": True, "temperature": 0.05, "mini_batch_size": 2, "report_to": "none"}
    values.update(overrides)
    return ContrastiveTrainingArguments(**values)


def _history(state_file: Path) -> dict[int, dict]:
    history = json.loads(state_file.read_text())["log_history"]
    return {h["step"]: h for h in history if "loss" in h}


def _max_adapter_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_build_embedder_with_a_seed_gives_the_same_lora_init(qwen2_path):
    lora = []
    for _ in range(2):
        torch.manual_seed(len(lora))  # a different global state each time: the seed argument must decide
        lora.append(get_peft_model_state_dict(build_embedder(_model_args(qwen2_path), seed=7).backbone.model))
    assert all(torch.equal(lora[0][k], lora[1][k]) for k in lora[0])
    assert any(float(v.abs().sum()) > 0 for v in lora[0].values())


@needs_sick
def test_two_trainers_with_one_seed_have_the_same_lora_init(qwen2_path, tmp_path):
    data = DataArguments(train_file=str(SICK), train_format="sick", max_train_samples=ROWS)
    adapters = []
    for name in ("a", "b"):
        torch.manual_seed(len(adapters))
        trainer = build_trainer(_model_args(qwen2_path), data, _training_args(tmp_path / name))
        adapters.append(get_peft_model_state_dict(trainer.embedder.backbone.model))
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


@needs_sick
def test_resume_across_a_dropped_batch_is_the_uninterrupted_run(qwen2_path, tmp_path):
    """One process, 2 epochs of 6 steps (epoch 0 filled its last batch): the run takes exactly max_steps; resumed at
    the epoch boundary (step 6) and inside epoch 1 (step 7) it gives the same losses and the same final adapter."""
    data = DataArguments(train_file=str(SICK), train_format="sick", max_train_samples=ROWS)
    full = build_trainer(_model_args(qwen2_path), data, _training_args(tmp_path / "full"))
    assert len(full.get_train_dataloader()) == 6
    full.train()
    reference = _history(tmp_path / "full" / "checkpoint-12" / "trainer_state.json")
    assert sorted(reference) == list(range(1, 13)) and full.state.global_step == 12  # exactly max_steps
    assert reference[6]["epoch"] == pytest.approx(1.0) and reference[12]["epoch"] == pytest.approx(2.0)
    for start in (6, 7):
        out = tmp_path / f"resumed{start}"
        resumed = build_trainer(_model_args(qwen2_path), data, _training_args(out))
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{start}"))
        again = _history(out / "checkpoint-12" / "trainer_state.json")
        assert sorted(again) == list(range(1, 13))
        for step in range(start + 1, 13):
            assert abs(again[step]["loss"] - reference[step]["loss"]) < 1e-6, (start, step)
            assert abs(again[step]["grad_norm"] - reference[step]["grad_norm"]) < 1e-5, (start, step)
        assert _max_adapter_difference(out / "checkpoint-12", tmp_path / "full" / "checkpoint-12") < 1e-6
    # resume=True takes the latest checkpoint (checkpoint-12 reached max_steps: loaded, nothing trained)
    done = build_trainer(_model_args(qwen2_path), data, _training_args(tmp_path / "full"))
    done.train(resume_from_checkpoint=True)
    assert done.state.global_step == 12 and not (tmp_path / "full" / "checkpoint-13").exists()
    empty = build_trainer(_model_args(qwen2_path), data, _training_args(tmp_path / "empty"))
    with pytest.raises(RunStateError, match=r"--resume_from_checkpoint true: .*empty holds no complete checkpoint"):
        empty.train(resume_from_checkpoint=True)


def _lco_ddp(args: list[str]) -> subprocess.CompletedProcess:
    """``recipes/lco.py`` under ``accelerate launch`` with the DDP config: 2 CPU processes (gloo)."""
    with socket.socket() as s:  # a free port: other DDP runs may hold the config's
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           "ds_configs/accelerate/ddp.yaml", "--main_process_port", str(port), "recipes/lco.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False)


def _recipe_args(model, output_dir, *extra: str) -> list[str]:
    return ["--config", "recipes/configs/lco_tiny.yaml", "--model_name_or_path", str(model), "--train_file",
            str(SICK), "--output_dir", str(output_dir), *extra]


@needs_sick
def test_two_fresh_processes_with_one_seed_log_identical_losses(qwen2_path, tmp_path):
    extra = ("--max_steps", "20", "--save_strategy", "steps", "--save_steps", "20")
    runs = [subprocess.Popen([sys.executable, "recipes/lco.py", *_recipe_args(qwen2_path, tmp_path / name, *extra)],
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")]  # two fresh processes, side by side
    for run in runs:
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        assert "'steps': 20" in stdout
    histories = [_history(tmp_path / name / "checkpoint-20" / "trainer_state.json") for name in ("a", "b")]
    assert sorted(histories[0]) == list(range(1, 21))  # a 20-step run logs 20 steps (it crosses an epoch of 16)
    for step, entry in histories[0].items():
        assert entry["loss"] == histories[1][step]["loss"] and entry["grad_norm"] == histories[1][step]["grad_norm"]
    assert _max_adapter_difference(tmp_path / "a" / "checkpoint-20", tmp_path / "b" / "checkpoint-20") == 0.0


@needs_sick
def test_two_process_resume_across_a_dropped_batch_is_the_uninterrupted_run(qwen2_path, tmp_path):
    """accelerate launch, DDP on 2 CPU processes: 6 batches an epoch = 3 steps; resume at step 4 (inside epoch 1,
    after the filled epoch 0) with --resume_from_checkpoint true from a copy of the checkpoint. (Before DDP really
    ran on CPU, each process trained its own replica and the resumed run, from rank 0's, could not agree.)"""
    common = ["--max_train_samples", str(ROWS), "--per_device_train_batch_size", str(BATCH), "--seed", str(SEED),
              "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "1"]
    full = _lco_ddp(_recipe_args(qwen2_path, tmp_path / "full", *common))
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-4000:]
    reference = _history(tmp_path / "full" / "checkpoint-6" / "trainer_state.json")
    assert sorted(reference) == list(range(1, 7)) and reference[3]["epoch"] == pytest.approx(1.0)
    (tmp_path / "res").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "res" / "checkpoint-4")
    resumed = _lco_ddp(_recipe_args(qwen2_path, tmp_path / "res", *common, "--resume_from_checkpoint", "true"))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    again = _history(tmp_path / "res" / "checkpoint-6" / "trainer_state.json")
    assert sorted(again) == list(range(1, 7))
    for step in (5, 6):
        assert abs(again[step]["loss"] - reference[step]["loss"]) < 1e-6, step
    assert _max_adapter_difference(tmp_path / "res" / "checkpoint-6", tmp_path / "full" / "checkpoint-6") < 1e-6


def _parse(*argv: str):
    parser = TrlParser((ModelArguments, DataArguments, ContrastiveTrainingArguments))
    return parse_recipe_args(parser, list(argv))


def _fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def test_a_folder_with_checkpoints_is_refused_naming_both_choices(tmp_path):
    out = tmp_path / "out"
    _fake_checkpoint(out, 2)
    _fake_checkpoint(out, 4)
    with pytest.raises(RunStateError) as error:
        _parse("--output_dir", str(out))
    message = str(error.value)
    assert "\n" not in message
    assert message == (f"{out} holds checkpoints of an earlier run (checkpoint-2, checkpoint-4): resume it with "
                       f"--resume_from_checkpoint true, or start over with a new --output_dir or with "
                       f"--overwrite_output_dir true (which deletes those checkpoints).")
    assert (out / "checkpoint-4").is_dir()  # nothing touched
    # a staged recipe's checkpoints (<stage>/checkpoint-<step>) count too; the recipe cannot resume them: the
    # message offers only a new folder or --overwrite_output_dir
    staged = tmp_path / "staged"
    _fake_checkpoint(staged / "stage1", 3)
    with pytest.raises(RunStateError) as error:
        _parse("--output_dir", str(staged))
    assert str(error.value) == (f"{staged} holds checkpoints of an earlier run (stage1/checkpoint-3), with no "
                                f"checkpoint a run can resume from: start over with a new --output_dir or with "
                                f"--overwrite_output_dir true (which deletes those checkpoints).")


def _fake_final(folder: Path) -> Path:
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "mmembed_config.json").write_text("{}")
    return folder / "final"


CARD = "---\ntags:\n- mmembed\n- sentence-embeddings\n- lco\n---\n\n# out: an mmembed embedding model\n"


def test_a_finished_run_is_refused_and_overwrite_deletes_only_what_it_wrote(tmp_path):
    """A run saved with save_strategy "no" (every tiny config) leaves no checkpoint, only final/ and its card: a
    rerun refuses instead of replacing them; --overwrite_output_dir deletes those (and a staged run's <stage>/final,
    its checkpoints) but not the files the run did not write, nor a README.md that is not mmembed's card."""
    out = tmp_path / "out"
    _fake_final(out)
    (out / "README.md").write_text(CARD)
    (out / "teacher_scores.jsonl").write_text("{}\n")
    with pytest.raises(RunStateError) as error:
        _parse("--output_dir", str(out))
    assert str(error.value) == (f"{out} holds the output of an earlier run (final), with no checkpoint a run can "
                                f"resume from: start over with a new --output_dir or with --overwrite_output_dir true "
                                f"(which deletes those folders and its model card README.md).")
    assert (out / "final" / "mmembed_config.json").is_file() and (out / "README.md").read_text() == CARD
    _parse("--output_dir", str(out), "--overwrite_output_dir", "true")
    assert sorted(p.name for p in out.iterdir()) == ["teacher_scores.jsonl"]

    staged = tmp_path / "staged"  # recipes/defsent.py: stage<k>/final, the last stage's moved to final
    _fake_final(staged / "stage1")
    _fake_final(staged)
    _fake_checkpoint(staged / "stage2", 4)
    (staged / "stage1" / "entry_embeddings.safetensors").write_bytes(b"x")
    (staged / "README.md").write_text("# my notes\n")  # the user's README, not a card mmembed wrote
    with pytest.raises(RunStateError, match=r"earlier run \(stage2/checkpoint-4, final, stage1/final\), with no "
                                            r"checkpoint .* \(which deletes those folders\)\.$"):
        _parse("--output_dir", str(staged))
    _parse("--output_dir", str(staged), "--overwrite_output_dir")
    assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*")) == [
        "README.md", "stage1", "stage1/entry_embeddings.safetensors", "stage2"]

    resumable = tmp_path / "resumable"  # checkpoints beside final: resuming is offered
    _fake_checkpoint(resumable, 3)
    _fake_final(resumable)
    with pytest.raises(RunStateError, match=r"the output of an earlier run \(checkpoint-3, final\): resume it with "
                                            r"--resume_from_checkpoint true, or start over"):
        _parse("--output_dir", str(resumable))
    *_, training_args = _parse("--output_dir", str(resumable), "--resume_from_checkpoint", "true")
    assert training_args.resume_from_checkpoint == str(resumable / "checkpoint-3")


def test_resume_true_takes_the_latest_complete_checkpoint(tmp_path):
    out = tmp_path / "out"
    for step in (2, 10):
        _fake_checkpoint(out, step)
    _fake_checkpoint(out, 12, complete=False)  # interrupted while saving: no trainer_state.json
    *_, training_args = _parse("--output_dir", str(out), "--resume_from_checkpoint", "true")
    assert training_args.resume_from_checkpoint == str(out / "checkpoint-10")
    *_, training_args = _parse("--output_dir", str(out), "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert training_args.resume_from_checkpoint == str(out / "checkpoint-2")
    with pytest.raises(RunStateError, match=r"checkpoint-12: the folder is not a complete checkpoint "
                                            r"\(no trainer_state.json\)"):
        _parse("--output_dir", str(out), "--resume_from_checkpoint", str(out / "checkpoint-12"))
    with pytest.raises(RunStateError, match=r"missing: the folder does not exist; name a checkpoint-<step> folder"):
        _parse("--output_dir", str(out), "--resume_from_checkpoint", str(tmp_path / "missing"))
    with pytest.raises(RunStateError) as error:
        _parse("--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint", "true")
    assert str(error.value) == (f"--resume_from_checkpoint true: {tmp_path / 'new'} holds no complete checkpoint "
                                f"(checkpoint-<step> folder with trainer_state.json); start without "
                                f"--resume_from_checkpoint, or name a checkpoint folder.")


def test_overwrite_output_dir_deletes_the_old_checkpoints_and_starts_over(tmp_path):
    out = tmp_path / "out"
    _fake_checkpoint(out, 2)
    (out / "notes.txt").write_text("kept")
    values = _parse("--output_dir", str(out), "--overwrite_output_dir")
    assert len(values) == 3 and values[2].resume_from_checkpoint is None  # no extra namespace for the recipe
    assert not (out / "checkpoint-2").exists() and (out / "notes.txt").read_text() == "kept"
    _fake_checkpoint(out, 2)
    config = tmp_path / "config.yaml"
    config.write_text(f"output_dir: {out}\noverwrite_output_dir: true\n")
    assert len(_parse("--config", str(config))) == 3 and not (out / "checkpoint-2").exists()
    assert len(_parse("--output_dir", str(tmp_path / "fresh"))) == 3  # a fresh folder needs nothing


@pytest.mark.parametrize("recipe", ["lco", "simcse", "muco", "distill", "defsent", "grace"])
def test_every_recipe_refuses_a_folder_with_an_earlier_run_before_building_a_model(recipe, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{recipe}", ROOT / "recipes" / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    _fake_checkpoint(tmp_path / "out", 5)
    _fake_final(tmp_path / "done")
    # a model path that does not exist: building a model would fail with another error
    for folder, earlier in (("out", r"checkpoints of an earlier run \(checkpoint-5\)"),
                            ("done", r"the output of an earlier run \(final\)")):
        with pytest.raises(RunStateError, match=rf"{folder} holds {earlier}"):
            module.main(["--output_dir", str(tmp_path / folder), "--model_name_or_path", str(tmp_path / "no_model"),
                         "--train_file", str(tmp_path / "no_data.jsonl")])
