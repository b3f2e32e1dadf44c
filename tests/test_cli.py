"""The ``mmembed`` command line, checked against the Python API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mmembed
from mmembed import cli
from mmembed.cli import build_parser, main, write_embeddings


def test_encode_texts_to_npy_matches_api(qwen2_path, tmp_path):
    out = tmp_path / "v.npy"
    assert main(["encode", "a cat", "two dogs", "--model", str(qwen2_path), "-o", str(out), "--dtype", "float32"]) == 0
    expected = mmembed.load(str(qwen2_path), dtype="float32").encode(["a cat", "two dogs"])
    assert np.abs(np.load(out) - expected).max() < 1e-6


def test_encode_input_file_with_images_to_jsonl(qwen2_vl_path, images, tmp_path):
    images[0].save(tmp_path / "a.png")
    images[1].save(tmp_path / "b.png")
    (tmp_path / "inputs.txt").write_text('a caption\na.png\n\n{"text": "a pair", "image": "b.png"}\n')
    out = tmp_path / "v.jsonl"
    assert main(["encode", "-i", str(tmp_path / "inputs.txt"), "--model", str(qwen2_vl_path), "-o", str(out),
                 "--truncate-dim", "16", "--dtype", "float32"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    expected = mmembed.load(str(qwen2_vl_path), dtype="float32").encode(
        ["a caption", images[0], {"text": "a pair", "image": images[1]}], truncate_dim=16)
    assert np.abs(np.array([r["embedding"] for r in rows]) - expected).max() < 1e-6


def test_bad_input_exits_with_a_message(qwen2_path, tmp_path, capsys):
    code = main(["encode", "a", "--image", str(tmp_path / "missing.png"), "--model", str(qwen2_path),
                 "-o", str(tmp_path / "x.npy")])
    assert code == 2
    assert "mmembed: error: inputs[1]: image file" in capsys.readouterr().err


def test_help_explains_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["encode", "--help"])
    text = capsys.readouterr().out
    for needle in ("--input-file", ".npy", ".jsonl", "image path", "default model", "--prompt-name"):
        assert needle in text


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``mmembed argv`` in this process: ``(exit code, stderr)`` (argparse's own errors exit through SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmembed: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_input_file_errors_name_file_and_line(qwen2_path, images, tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    images[0].save(tmp_path / "outside.png")
    cases = {"bad json": 'ok\n{"text": broken\n', "missing image": "ok\nok\nmissing.png\n",
             "escape": "../outside.png\n", "bad keys": '{"caption": "x"}\n'}
    expected = {"bad json": ":2: invalid JSON", "missing image": ":3: image file", "escape": ":1: image path",
                "bad keys": ":1: a JSON line"}
    for name, content in cases.items():
        f = tmp_path / "sub" / "in.txt"
        f.write_text(content)
        code, err = run_cli(["encode", "-i", str(f), "--model", str(qwen2_path), "-o", str(tmp_path / "x.npy")],
                            capsys)
        assert_one_line_error(code, err, f"{f}{expected[name]}")


def test_user_errors_are_one_line_before_any_model_is_loaded(tmp_path, capsys):
    """Each mistake is found before the model loads: the model path does not exist, and its error never shows."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9\n")
    nowhere = str(tmp_path / "no-model")
    x = str(tmp_path / "x.npy")
    cases = [
        (["encode", "a", "--batch-size", "0", "-o", x], "argument --batch-size: 0 must be at least 1"),
        (["encode", "a", "--dtype", "float99", "-o", x], "--dtype 'float99' is not a torch dtype"),
        (["encode", "-i", str(tmp_path / "missing.txt"), "-o", x], "missing.txt' does not exist"),
        (["encode", "-i", str(tmp_path / "folder"), "-o", x], "is a folder; give a text file"),
        (["encode", "-i", str(tmp_path / "latin1.txt"), "-o", x], "latin1.txt:2: not valid UTF-8 (byte 0xe9"),
        (["encode", "a", "-o", str(tmp_path / "out.csv")], "out.csv': use a file name ending in .npy or .jsonl"),
        (["encode", "a", "-o", str(tmp_path / "folder")], "folder': use a file name ending in .npy or .jsonl"),
        (["encode", "a", "-o", str(tmp_path / "x.npy" / "y.npy")], "cannot be created"),
    ]
    if not torch.cuda.is_available():
        cases.append((["encode", "a", "--device", "cuda", "-o", x], "--device cuda: CUDA is not available"))
    if os.path.isdir("/proc/self"):
        cases.append((["encode", "a", "-o", "/proc/x.npy"], "its folder '/proc' is not writable"))
        cases.append((["eval", "sts", "--data", str(tmp_path), "-o", "/proc/x"], "--output '/proc/x' is not writable"))
    Path(x).write_bytes(b"older")
    for argv, needle in cases:
        code, err = run_cli(argv + ["--model", nowhere], capsys)
        assert_one_line_error(code, err, needle)
    assert Path(x).read_bytes() == b"older"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "latin1.txt", "x.npy"]  # nothing made


def test_only_file_system_errors_about_the_users_paths_are_user_errors(tmp_path):
    """A FileNotFoundError / PermissionError naming a path the user gave (or one below it) is the user's mistake (one
    line, exit code 2); one about any other path is a bug of mmembed's and keeps its traceback."""
    from mmembed.cli import build_parser, names_user_path

    args = build_parser().parse_args(["eval", "sts", "--data", str(tmp_path / "senteval"), "-o", str(tmp_path / "o")])
    assert names_user_path(FileNotFoundError(2, "No such file", str(tmp_path / "senteval" / "STS" / "x.txt")), args)
    assert names_user_path(PermissionError(13, "Permission denied", str(tmp_path / "o")), args)
    assert not names_user_path(FileNotFoundError(2, "No such file", str(tmp_path / "elsewhere.json")), args)
    assert not names_user_path(FileNotFoundError("no file named"), args)
    encode = build_parser().parse_args(["encode", "-i", str(tmp_path / "in" / "list.txt"), "-o", "v.npy"])
    assert names_user_path(FileNotFoundError(2, "No such file", str(tmp_path / "in" / "cat.png")), encode)


def test_model_errors_are_one_line_and_debug_shows_the_traceback(qwen2_path, tmp_path, capsys):
    x = str(tmp_path / "x.npy")
    code, err = run_cli(["encode", "a", "--model", str(tmp_path / "no-model"), "-o", x], capsys)
    assert_one_line_error(code, err, "no model at")
    code, err = run_cli(["encode", "a", "--prompt-name", "query", "--model", str(qwen2_path), "-o", x], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("mmembed: error: --prompt-name query: not a prompt of this model (it "
                                            "has no saved prompts); give the instruction itself with --prompt '...'.")
    code, err = run_cli(["encode", "a", "--dtype", "float99", "--model", str(qwen2_path), "-o", x, "--debug"], capsys)
    assert code == 2 and "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1].startswith("mmembed: error: --dtype 'float99'")


def test_console_error_is_one_line_on_stderr(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mmembed.cli", "encode", "a", "-o", str(tmp_path / "out.csv")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"mmembed: error: --output '{tmp_path / 'out.csv'}': use a file name ending in .npy or .jsonl.\n"


def test_output_goes_to_a_new_file_renamed_over_the_old_one(qwen2_path, tmp_path):
    out = tmp_path / "new" / "v.npy"  # a missing folder below a writable one is made
    assert main(["encode", "a cat", "--model", str(qwen2_path), "-o", str(out)]) == 0
    first = out.stat().st_ino
    with out.open("rb") as old:  # a reader of the old file keeps reading the old file
        assert main(["encode", "two dogs", "--model", str(qwen2_path), "-o", str(out)]) == 0
        assert np.load(old).shape == (1, 64)
    assert out.stat().st_ino != first and [p.name for p in out.parent.iterdir()] == ["v.npy"]


@pytest.fixture
def sigint_raises():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, even where the test-suite was started in the
    background (nohup, ``&``), whose processes inherit SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class _InterruptedAt(list):
    """Vectors whose iteration receives a real SIGINT at row ``at``, as when Ctrl-C hits a long write."""

    def __init__(self, rows, at: int):
        super().__init__(rows)
        self.at = at

    def __iter__(self):
        for i, row in enumerate(super().__iter__()):
            if i == self.at:
                os.kill(os.getpid(), signal.SIGINT)
            yield row


def test_interrupted_write_keeps_the_older_file(tmp_path, sigint_raises):
    out = tmp_path / "big.jsonl"
    out.write_text('{"index": 0}\n' * 5)
    old = out.read_bytes()
    rows = _InterruptedAt(np.ones((5000, 8), dtype=np.float32), at=2000)
    with pytest.raises(KeyboardInterrupt):
        write_embeddings(out, rows, [f"s{i}" for i in range(5000)])
    assert out.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["big.jsonl"]


def test_cli_interrupted_while_writing_exits_130_and_keeps_the_older_file(qwen2_path, tmp_path, capsys, monkeypatch,
                                                                          sigint_raises):
    out = tmp_path / "v.jsonl"
    out.write_text("older\n")
    real = cli.write_embeddings
    monkeypatch.setattr(cli, "write_embeddings", lambda o, v, i: real(o, _InterruptedAt(v, at=1), i))
    code, err = run_cli(["encode", "a", "b", "c", "--model", str(qwen2_path), "-o", str(out)], capsys)
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "mmembed: interrupted; a file being written keeps its older contents."
    assert out.read_text() == "older\n" and [p.name for p in tmp_path.iterdir()] == ["v.jsonl"]


def test_sigint_from_outside_during_a_large_write_keeps_the_older_file(tmp_path):
    """The probe: Ctrl-C while 30,000 lines are written over an older file leaves that file byte for byte."""
    out = tmp_path / "big.jsonl"
    out.write_bytes(b'{"index": 0, "input": "older"}\n' * 1000)
    old = out.read_bytes()
    # the handler Python installs when SIGINT is not ignored at start (a suite run in the background ignores it)
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "import sys, numpy as np; from pathlib import Path; from mmembed.cli import write_embeddings; "
            "n = 30000; write_embeddings(Path(sys.argv[1]), np.random.default_rng(0).random((n, 64), "
            "dtype=np.float32), [f'sentence {i}' for i in range(n)])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p.stat().st_size > 100_000]
        if partial:
            break
        time.sleep(0.005)
    assert partial, "the writer finished or never started writing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert out.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["big.jsonl"]


def test_progress_bar_only_on_a_terminal(qwen2_path, tmp_path, capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(f"sentence {i}" for i in range(300)))
    assert main(["encode", "-i", str(inputs), "--model", str(qwen2_path), "-o", str(tmp_path / "v.npy")]) == 0
    assert "Encoding" not in capsys.readouterr().err  # captured stderr is not a terminal


def test_eval_report_files_are_replaced_whole(qwen2_path, tmp_path, capsys):
    """``Report.save`` (json, md, png) writes each file to a temporary name and renames it over the older one."""
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(f"sentence {i} about topic {i % 5}" for i in range(30)))
    out = tmp_path / "report"
    argv = ["eval", "probes", "--data", str(data), "--max-sentences", "30", "--model", str(qwen2_path), "-o", str(out)]
    assert main(argv) == 0
    names = ["probes.json", "probes.md", "probes.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    handles = {name: (out / name).open("rb") for name in names}
    before = {name: ((out / name).stat().st_ino, (out / name).read_bytes()) for name in names}
    try:
        assert main(argv) == 0
        for name, handle in handles.items():  # the older files were renamed over, not rewritten in place
            assert (out / name).stat().st_ino != before[name][0]
            assert handle.read() == before[name][1]
    finally:
        for handle in handles.values():
            handle.close()
    assert sorted(p.name for p in out.iterdir()) == names
    assert (out / "probes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


def test_training_curve_is_a_whole_png(tmp_path):
    from mmembed.train.plots import save_curve

    path = tmp_path / "loss.png"
    save_curve([3.0, 2.0, 1.5], path, title="loss", xlabel="step", ylabel="loss")
    first = path.stat().st_ino
    save_curve([3.0, 2.5, 1.0], path, title="loss", xlabel="step", ylabel="loss")
    assert path.stat().st_ino != first and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
