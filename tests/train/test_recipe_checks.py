"""Recipes trust what they are given and say what they did: config values checked at parse time (one line naming the
key, the value and the rule), a user error printed once (exit code 2; one line under ``accelerate launch -q``),
short training logs with the full dict kept in ``trainer_state.json``, and mmembed's own model card."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerControl, TrainerState

from mmembed.errors import ConfigError, DataError
from mmembed.train import card
from mmembed.train.logs import ShortPrinterCallback, ShortProgressCallback, short_line, use_short_logs
from mmembed.train.run import run_recipe

ROOT = Path(__file__).resolve().parents[2]
SICK = ROOT.parent / "shared" / "data" / "sick"
TINY = {"lco": "lco_tiny", "simcse": "simcse_tiny", "grace": "grace_tiny", "muco": "muco_tiny",
        "distill": "distill_tiny", "defsent": "defsent_tiny"}


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", ROOT / "recipes" / f"{name}.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[f"{name}_recipe"] = recipe  # dataclasses look their module up
    spec.loader.exec_module(recipe)
    return recipe


def _config(tmp_path: Path, recipe: str, **values) -> Path:
    """The recipe's tiny config with ``values`` replaced, as YAML typed them (4.5 a float, 1 an int)."""
    config = yaml.safe_load((ROOT / "recipes" / "configs" / f"{TINY[recipe]}.yaml").read_text())
    config.update(output_dir=str(tmp_path / "out"), **values)
    path = tmp_path / f"{recipe}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ------------------------------------------------------------------------------------ checks at parse time

BAD_VALUES = [
    ("lco", "lora_r", 4.5, "lora_r must be an integer >= 1, got 4.5"),
    ("lco", "lora_r", 0, "lora_r must be an integer >= 1, got 0"),
    ("lco", "temperature", 0, "temperature must be a number > 0, got 0"),
    ("lco", "lora_alpha", 0, "lora_alpha must be an integer > 0, got 0"),
    ("lco", "lora_dropout", 1.0, "lora_dropout must be a number in [0, 1), got 1.0"),
    ("lco", "mini_batch_size", 0, "mini_batch_size must be an integer >= 1 or null, got 0"),
    ("lco", "mini_batch_tokens", 2.5, "mini_batch_tokens must be an integer >= 1 or null, got 2.5"),
    ("lco", "pooling", "avg", ("pooling must be one of last, mean, mean_excluding_prefix, cls, special_token or "
                              "special_token:<token>, got 'avg'")),
    ("lco", "train_format", "tsv", ("train_format must be one of triplets, pairs, mmeb, multiturn, sick, sentences, "
                                   "documents, stsb, sick_relatedness, teacher_scores (or several, comma-separated), "
                                   "got 'tsv'")),
    ("lco", "dtype", "float99", "dtype must be a torch dtype name (float32, bfloat16, float16, auto), got 'float99'"),
    ("lco", "lora", 1, "lora must be true or false, got 1"),
    ("lco", "max_train_samples", 0, "max_train_samples must be an integer >= 1 or null, got 0"),
    ("lco", "dataset_weights", [0, 0], ("dataset_weights must be a list of numbers >= 0 with a sum > 0 or null, "
                                        "got [0, 0]")),
    ("lco", "dataset_weights", [1, -1], ("dataset_weights must be a list of numbers >= 0 with a sum > 0 or null, "
                                         "got [1, -1]")),
    ("lco", "per_device_train_batch_size", 0, "per_device_train_batch_size must be an integer >= 1, got 0"),
    ("lco", "max_steps", 2.5, "max_steps must be an integer >= -1, got 2.5"),
    ("lco", "lora_target_modules", ["q_proj", 3], ("lora_target_modules must be a list of strings or null, got "
                                                  "['q_proj', 3]")),
    ("simcse", "method", "simcse2", "method must be one of unsup, sup, esimcse, debcse, whitened, ccp, got 'simcse2'"),
    ("simcse", "dup_rate", 1.5, "dup_rate must be a number in [0, 1], got 1.5"),
    ("simcse", "queue_size", 0, "queue_size must be an integer >= 1 or null, got 0"),
    ("simcse", "elastic", "matryoshka", "elastic must be one of none, starbucks, 2dmse, got 'matryoshka'"),
    ("simcse", "elastic_dims", [8, 0], "elastic_dims must be a list of integers >= 1 or null, got [8, 0]"),
    ("grace", "reward_temperature", 0, "reward_temperature must be a number > 0, got 0"),
    ("grace", "num_generations", 1, "num_generations must be an integer >= 2 or null, got 1"),
    ("grace", "train_format", "csv", "train_format must be one of grace, sentences, sick, got 'csv'"),
    ("muco", "stage", "train", "stage must be one of pretrain, finetune, got 'train'"),
    ("muco", "max_turns", 0, "max_turns must be an integer >= 1 or null, got 0"),
    ("distill", "alpha", 1.5, "alpha must be a number in [0, 1], got 1.5"),
    ("distill", "task", "mse", "task must be one of infonce, cosine, cosent, none, got 'mse'"),
    ("defsent", "stages", 0, "stages must be an integer >= 1, got 0"),
    ("defsent", "similarity", "l2", "similarity must be one of cosine, dot, got 'l2'"),
]


@pytest.mark.parametrize(("recipe", "key", "value", "message"), BAD_VALUES,
                         ids=[f"{r}-{k}-{v}" for r, k, v, _ in BAD_VALUES])
def test_bad_config_value_is_one_line_naming_key_value_and_rule(recipe, key, value, message, tmp_path):
    """The recipe's own ``main`` stops while parsing (no model is loaded): the YAML value as it arrives (a float for
    an int field, 0 for a temperature) is named with its rule, where peft / the loss used to fail later."""
    with pytest.raises(ConfigError) as error:
        _recipe(recipe).main(["--config", str(_config(tmp_path, recipe, **{key: value}))])
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_modules_to_save_with_an_init_adapter_is_refused(tmp_path):
    """An adapter that goes on training keeps its own modules_to_save; a second list would be silently ignored."""
    config = _config(tmp_path, "lco", init_adapter=str(tmp_path), lora_modules_to_save=["visual"])
    with pytest.raises(ConfigError) as error:
        _recipe("lco").main(["--config", str(config)])
    assert str(error.value) == ("lora_modules_to_save must be null with init_adapter (the adapter's own config says "
                                "which modules it trains), got ['visual']")


def test_parse_mistakes_are_one_line(tmp_path):
    """Unknown keys in the YAML or on the command line, a value argparse cannot convert and a missing config file are
    one-line ConfigErrors (not argparse's usage block or TRL's traceback)."""
    lco = _recipe("lco")
    (tmp_path / "bad").mkdir()
    config = _config(tmp_path / "bad", "lco", foo_bar=3)
    cases = [(["--config", str(config)], ("the config file has keys that are not options of this recipe: foo_bar; "
                                          "remove or rename them (see ")),
             (["--config", str(_config(tmp_path, "lco")), "--no_such_flag", "3"],
              "the command line has options that are not options of this recipe: no_such_flag;"),
             (["--config", str(_config(tmp_path, "lco")), "--learning_rate", "abc"],
              "argument --learning_rate/--learning-rate: invalid float value: 'abc' (see "),
             (["--config", str(tmp_path / "missing.yaml")], f"--config {tmp_path / 'missing.yaml'}: no such file.")]
    for argv, message in cases:
        with pytest.raises(ConfigError) as error:
            lco.main(argv)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_good_values_arrive_normalised(tmp_path):
    """A YAML int for a float field becomes a float; a scalar for a list field a one-element list (as on the
    command line); the argparse-converted command-line values pass."""
    from trl import TrlParser

    from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments

    config = _config(tmp_path, "lco", temperature=1, lora_target_modules="q_proj", pooling="special_token:<|emb|>")
    parser = TrlParser((ModelArguments, DataArguments, ContrastiveTrainingArguments))
    model, _, training = parser.parse_args_and_config(["--config", str(config), "--lora_r", "8"])
    assert training.temperature == 1.0 and isinstance(training.temperature, float)
    assert model.lora_target_modules == ["q_proj"] and model.lora_r == 8
    assert model.pooling == "special_token:<|emb|>"


def test_trainer_bar_only_on_a_terminal(tmp_path, monkeypatch):
    """The Trainer's progress bar defaults to off where stderr is not a terminal (a log file gets the per-step lines,
    not a bar redrawn line after line), on where it is one (a real pseudo-terminal here); an explicit value wins."""
    from trl import TrlParser

    from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
    from mmembed.train.run import parse_recipe_args

    config = _config(tmp_path, "lco")
    config.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load(config.read_text()).items()
                                      if k != "disable_tqdm"}))  # the tiny config sets it

    def disable_tqdm(*argv: str) -> bool:
        parser = TrlParser((ModelArguments, DataArguments, ContrastiveTrainingArguments))
        return parse_recipe_args(parser, ["--config", str(config), *argv])[2].disable_tqdm

    assert disable_tqdm() is True and disable_tqdm("--disable_tqdm", "false") is False
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert disable_tqdm() is False and disable_tqdm("--disable_tqdm", "true") is True
    os.close(leader)


def test_multicsr_data_checks_its_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^filter_type must be one of 15, 2, 13, got 7$"):
        _recipe("multicsr_data").main(["--input_file", "x", "--output_file", str(tmp_path / "o.jsonl"),
                                       "--filter_type", "7"])


def _bad_sts_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad-sts.csv"
    path.write_text("main\tx\t2012\t0001\t4.0\ta cat\ta kitten\nmain\tx\t2012\t0002\tnan\ta dog\ta car\n")
    return path


@pytest.mark.parametrize("recipe", ["lco", "simcse", "distill", "defsent"])
def test_a_bad_evaluation_file_stops_the_run_before_the_model_is_built(recipe, tmp_path):
    """``eval_sts_file`` is read while parsing: a missing file or a bad line is named (file:line) before any model is
    built (the model path does not exist: building it would raise another error), not after the training."""
    config = _config(tmp_path, recipe, model_name_or_path=str(tmp_path / "no_model"))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'missing.csv'} does not exist"):
        _recipe(recipe).main(["--config", str(config), "--eval_sts_file", str(tmp_path / "missing.csv")])
    with pytest.raises(DataError) as error:
        _recipe(recipe).main(["--config", str(config), "--eval_sts_file", str(_bad_sts_file(tmp_path))])
    assert str(error.value) == (f"{tmp_path / 'bad-sts.csv'}:2: score 'nan' is not a finite number; fix the line or "
                                f"remove the pair.")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", ["lco", "simcse", "muco"])
def test_the_training_data_is_read_before_the_model_is_built(recipe, tmp_path):
    """A bad training row stops the run with its file:line before the model loads."""
    data = tmp_path / "rows.jsonl"
    if recipe == "muco":  # the finetune stage reads MMEB-train rows
        data.write_text('{"qry": "q", "pos_text": "p"}\n{"qry": 3, "pos_text": "p"}\n')
    else:
        data.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": 3, "positive": "b"}\n')
    config = _config(tmp_path, recipe, model_name_or_path=str(tmp_path / "no_model"), train_file=str(data),
                     **({"train_format": "mmeb", "stage": "finetune"} if recipe == "muco" else
                        {"train_format": "triplets"}))
    if recipe == "simcse":
        config.write_text(config.read_text() + "method: unsup\n")
    with pytest.raises(DataError, match=rf"^{data}:2"):
        _recipe(recipe).main(["--config", str(config)])


def test_training_defaults_have_no_side_effect(monkeypatch):
    """``training_defaults`` only returns defaults; the CPU multi-process environment is set by its own call (made by
    ``parse_recipe_args`` before the arguments are made), and only for plain DDP on a CPU-only host."""
    import torch

    from mmembed.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("ACCELERATE_USE_CPU", "ACCELERATE_USE_DEEPSPEED"):
        # set before deleting so that monkeypatch records (and restores) the original state: a bare delenv of an
        # absent variable records nothing, and the value use_cpu_processes sets below would leak into later tests
        # (ACCELERATE_USE_CPU=true breaks the ZeRO-3 launch of test_trainer)
        monkeypatch.setenv(name, "false")
        monkeypatch.delenv(name)
    before = dict(os.environ)
    defaults = distributed.training_defaults()
    assert dict(os.environ) == before and "dataloader_pin_memory" not in defaults
    assert distributed.use_cpu_processes() is not torch.cuda.is_available()
    assert (os.environ.get("ACCELERATE_USE_CPU") == "true") is not torch.cuda.is_available()
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert distributed.use_cpu_processes() is False and "ACCELERATE_USE_CPU" not in os.environ


def test_multicsr_data_never_empties_a_file_it_did_not_write(tmp_path):
    """An output file without its report is refused (not emptied) and a corrupt report is one line, both before the
    model loads (its path does not exist)."""
    from mmembed.errors import OutputPathError

    recipe = _recipe("multicsr_data")
    sentences = tmp_path / "s.txt"
    sentences.write_text("a cat sits.\n")
    out = tmp_path / "triplets.jsonl"
    out.write_text('{"mine": 1}\n')
    argv = ["--input_file", str(sentences), "--output_file", str(out), "--model_name_or_path", str(tmp_path / "none")]
    with pytest.raises(OutputPathError) as error:
        recipe.main(argv)
    assert str(error.value) == (f"--output_file {out} exists without its report {out}.report.json, so this script did "
                                f"not write it: give another --output_file, or delete {out} to start over.")
    assert out.read_text() == '{"mine": 1}\n'
    report = tmp_path / "triplets.jsonl.report.json"
    report.write_text('{"inputs": 3')
    with pytest.raises(DataError, match=rf"^{report}: not a valid report of {out} \(not JSON: .*\); delete both "
                                        rf"files to start over\.$"):
        recipe.main(argv)
    report.write_text('{"kept": 3}')
    with pytest.raises(DataError, match=r"no 'inputs' count >= 0"):
        recipe.main(argv)
    assert out.read_text() == '{"mine": 1}\n'


# ------------------------------------------------------------------------------- a user error, printed once

def test_run_recipe_prints_a_user_error_once_with_exit_code_2(tmp_path, capsys, monkeypatch):
    """``run_recipe``: ``error: <message>`` on stderr, nothing on stdout, exit code 2; a process other than the
    main one (``RANK`` > 0 under ``accelerate launch``) exits the same way without printing."""
    argv = ["--config", str(_config(tmp_path, "lco", lora_r=4.5))]
    lco = _recipe("lco")
    with pytest.raises(SystemExit) as leaving:
        run_recipe(lco.main, argv)
    out, err = capsys.readouterr()
    assert leaving.value.code == 2 and out == ""
    assert err == "error: lora_r must be an integer >= 1, got 4.5\n"
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as leaving:
        run_recipe(lco.main, argv)
    assert leaving.value.code == 2 and capsys.readouterr() == ("", "")


def _accelerate(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([str(Path(sys.executable).with_name("accelerate")), "launch", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_accelerate_launch_prints_a_recipe_error_once_without_traceback(tmp_path):
    """``accelerate launch -q --config_file ds_configs/accelerate/single.yaml recipes/lco.py`` with a bad value:
    stderr is exactly the error line (no "values were not passed" block, no launcher traceback; accelerate's -q
    exits with 1). With 2 processes (ddp.yaml) the line is printed once, by the main process, and no traceback
    follows (torch's launcher still adds its summary of the failed processes)."""
    config = str(_config(tmp_path, "lco", lora_r=4.5))
    line = "error: lora_r must be an integer >= 1, got 4.5"
    single = _accelerate(["-q", "--config_file", "ds_configs/accelerate/single.yaml", "recipes/lco.py",
                          "--config", config])
    ddp = _accelerate(["-q", "--config_file", "ds_configs/accelerate/ddp.yaml", "recipes/lco.py", "--config", config,
                       "--output_dir", str(tmp_path / "ddp")])
    out, err = single.communicate(timeout=300)
    assert single.returncode == 1, err
    assert out == "" and err.splitlines() == [line]
    out, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 1, err
    assert (out + err).count(line) == 1 and (out + err).count("error: ") == 1
    assert "Traceback" not in out + err and "were not passed" not in err


# ----------------------------------------------------------------------------------------- short logs

def test_short_line_formats():
    step = {"loss": 0.23449, "grad_norm": 1.2345, "learning_rate": 3.9e-4, "loss_q2c": 0.2, "accuracy": 0.75,
            "temperature": 0.05, "epoch": 0.5}
    assert short_line(step, 10, 300) == "step 10/300  loss 0.2345  lr 3.9e-04  grad_norm 1.23  accuracy 0.75"
    grpo = {"loss": 0.1, "grad_norm": 0.5, "learning_rate": 1e-4, "num_tokens": 1234.0, "reward": -0.2232,
            "reward_std": 0.1, **{f"completions/{k}": 1.0 for k in ("mean_length", "min_length", "max_length")},
            **{f"timing/{k}_s": 0.1 for k in ("step", "generation", "reward", "update")}, "entropy": 1.0}
    assert len(str(grpo)) > 300
    assert short_line(grpo, 1, 2) == "step 1/2  loss 0.1000  lr 1.0e-04  grad_norm 0.50  reward -0.2232"
    end = {"train_runtime": 95.14, "train_samples_per_second": 1.0, "train_loss": 0.25671, "epoch": 3.0}
    assert short_line(end, 300, 300) == "done: 300 steps in 95.1 s, mean loss 0.2567"
    assert short_line({"eval_loss": 0.5, "eval_runtime": 2.0, "epoch": 1.0}, 20) == \
        "step 20  eval_loss 0.5  eval_runtime 2"


def test_progress_bar_writes_short_lines(capsys):
    """The printing callbacks are replaced once, in place and with their settings; with the bar on, the line is
    written above the bar."""
    first = ProgressCallback(max_str_len=7)
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[first, PrinterCallback()]))
    use_short_logs(trainer)
    bar, printer = trainer.callback_handler.callbacks
    assert type(bar) is ShortProgressCallback and type(printer) is ShortPrinterCallback and bar.max_str_len == 7
    state = TrainerState(max_steps=4, global_step=2)
    bar.on_train_begin(None, state, TrainerControl())
    assert bar.training_bar is not None
    bar.on_log(None, state, TrainerControl(), logs={"loss": 1.5, "learning_rate": 1e-3, "grad_norm": 2.0})
    bar.on_train_end(None, state, TrainerControl())
    assert "step 2/4  loss 1.5000  lr 1.0e-03  grad_norm 2.00\n" in capsys.readouterr().out


# --------------------------------------------------------------------------------- a run, its logs, its card

def _sts_file(tmp_path: Path) -> Path:
    pairs = [("a cat sits on the mat", "a cat is sitting on a mat", 4.8), ("a man plays guitar", "a dog runs", 0.2),
             ("the river is wide", "the stream is broad", 3.9), ("she cooks rice", "a woman is cooking", 3.1)]
    path = tmp_path / "sts-dev.csv"
    path.write_text("".join(f"main\tx\t2012\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(pairs)))
    return path


def test_recipe_run_logs_short_lines_and_writes_mmembed_card(qwen2_path, tmp_path, capsys):
    """``recipes/lco.py`` through ``run_recipe`` (as ``python recipes/lco.py``): one short line per step, no
    pin_memory warning on CPU, the full log dict in trainer_state.json, and mmembed's card (base model, recipe,
    data, steps, scores before -> after, how to load it: the card's own snippet runs) in the output folder and in
    ``final``."""
    out = tmp_path / "run"
    argv = ["--config", "recipes/configs/lco_tiny.yaml", "--model_name_or_path", str(qwen2_path), "--train_file",
            str(SICK), "--output_dir", str(out), "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "3",
            "--eval_sts_file", str(_sts_file(tmp_path)), "--eval_before_training", "true"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_recipe(_recipe("lco").main, argv)
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    pattern = r"step (\d)/3  loss \d\.\d{4}  lr \d\.\de-0\d  grad_norm \d+\.\d\d  accuracy [\d.]+"
    assert [re.fullmatch(pattern, line).group(1) for line in steps] == ["1", "2", "3"]
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert {"loss", "loss_q2c", "accuracy", "temperature", "grad_norm", "learning_rate"} <= set(history[0])

    text = (out / "README.md").read_text()
    assert (out / "final" / "README.md").read_text() == text
    assert "fine-tuned version" not in text
    for part in (f"- base model: {qwen2_path}", "recipe `recipes/lco.py`", "LoRA r=4, alpha=8", f"- train_file: `{SICK}`",
                 "- train_format: `sick`", "- steps: 3", "- seed: 42",
                 f"| sts_spearman | {result['sts_spearman_before']} | {result['sts_spearman']} |",
                 f'model = mmembed.load("{out / "final"}")'):
        assert part in text, part
    snippet = text.split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the card's own loading code, as a user would run it
    assert np.asarray(scope["vectors"]).shape[0] == 2


def test_card_of_a_sentence_transformers_folder_loads_both_ways(qwen2_path, tmp_path):
    """A folder sentence-transformers can read gets its snippet too; both snippets run and agree."""
    import mmembed
    from mmembed.train.arguments import DataArguments, ModelArguments

    final = tmp_path / "simcse-run" / "final"
    mmembed.load(str(qwen2_path), pooling="mean", device="cpu").save(final)
    args = [ModelArguments(model_name_or_path=str(qwen2_path), pooling="mean", lora=False),
            DataArguments(train_file="sentences.txt", train_format="sentences"),
            SimpleNamespace(method="unsup", output_dir=str(final.parent), seed=7, max_steps=5)]
    written = card.write_recipe_card("simcse", {"steps": 5, "sts_spearman": 61.2}, args)
    assert written == [final.parent / "README.md", final / "README.md"]
    text = written[1].read_text()
    assert "method `unsup`" in text and "LoRA" not in text and "| sts_spearman |  | 61.2 |" in text
    blocks = [b.split("```")[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 2 and "SentenceTransformer" in blocks[1]
    vectors = []
    for block in blocks:
        scope: dict = {}
        exec(block, scope)  # noqa: S102
        vectors.append(np.asarray(scope["vectors"])[0])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_grace_run_logs_short_lines_and_writes_no_trl_card(qwen2_path, tmp_path, capsys):
    """GRACE (TRL's GRPOTrainer underneath, whose checkpoints wrote "a fine-tuned version of None"): with a
    checkpoint saved, the output folder's README.md is mmembed's card; each step is one short line although GRPO
    logs about 30 metrics, all of them kept in trainer_state.json."""
    out = tmp_path / "grace"
    argv = ["--config", "recipes/configs/grace_tiny.yaml", "--model_name_or_path", str(qwen2_path), "--train_file",
            str(SICK), "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "2"]
    result = run_recipe(_recipe("grace").main, argv)
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(steps) == 2 and all(len(line) < 90 for line in steps)
    assert re.fullmatch(r"step 1/2  loss -?\d\.\d{4}  lr 1\.0e-04  grad_norm \d+\.\d\d  reward -?[\d.]+", steps[0])
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert len(history[0]) > 20 and "reward_std" in history[0]
    text = (out / "README.md").read_text()
    assert "fine-tuned version" not in text and "recipe `recipes/grace.py`" in text
    assert f"| reward | {result['reward_first']} | {result['reward_last']} |" in text
    assert "rationale mode" in text and (out / "final" / "README.md").read_text() == text
