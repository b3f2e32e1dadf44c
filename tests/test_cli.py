"""The ``mmembed`` command line, checked against the Python API."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmembed
from mmembed.cli import build_parser, main


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
    code = main(["encode", "--image", str(tmp_path / "missing.png"), "--model", str(qwen2_path),
                 "-o", str(tmp_path / "x.npy")])
    assert code == 2
    assert "inputs[0]: image file" in capsys.readouterr().err


def test_help_explains_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["encode", "--help"])
    text = capsys.readouterr().out
    for needle in ("--input-file", ".npy", ".jsonl", "image path", "default model", "--prompt-name"):
        assert needle in text


def test_input_file_errors_name_file_and_line(qwen2_path, images, tmp_path):
    (tmp_path / "sub").mkdir()
    images[0].save(tmp_path / "outside.png")
    cases = {"bad json": 'ok\n{"text": broken\n', "missing image": "ok\nok\nmissing.png\n",
             "escape": "../outside.png\n", "bad keys": '{"caption": "x"}\n'}
    expected = {"bad json": ":2: invalid JSON", "missing image": ":3: image file", "escape": ":1: image path",
                "bad keys": ":1: a JSON line"}
    for name, content in cases.items():
        f = tmp_path / "sub" / "in.txt"
        f.write_text(content)
        with pytest.raises(SystemExit, match=expected[name]):
            main(["encode", "-i", str(f), "--model", str(qwen2_path), "-o", str(tmp_path / "x.npy")])
