"""The README works as written: every ``mmembed.<name>`` it mentions resolves after a plain ``import mmembed``, and
its Python blocks run, with the placeholders (hub ids, adapter and image paths) pointed at tiny local models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmembed import testing

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_every_dotted_name_in_the_readme_resolves_after_import_mmembed():
    names = sorted(set(re.findall(r"(?<![\w/.-])(mmembed(?:\.[A-Za-z_]\w*)+)", README)))
    assert "mmembed.eval.search.topk_search" in names and "mmembed.rationale.RationaleConfig" in names
    script = ("import functools, json, sys, mmembed\n"
              "def ok(name):\n"
              "    try:\n"
              "        functools.reduce(getattr, name.split('.')[1:], mmembed)\n"
              "        return True\n"
              "    except AttributeError:\n"
              "        return False\n"
              "print(json.dumps([n for n in json.loads(sys.argv[1]) if not ok(n)]))\n")
    run = subprocess.run([sys.executable, "-c", script, json.dumps(names)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert json.loads(run.stdout) == [], f"README names that do not resolve: {run.stdout}"


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory) -> dict[str, str]:
    """README placeholder -> a local stand-in (tiny random-weight models of the same architectures)."""
    import mmembed
    from mmembed.train.arguments import ModelArguments
    from mmembed.train.build import attach_lora

    root = tmp_path_factory.mktemp("readme")
    text_model = testing.build_tiny_qwen2(root / "qwen2")
    vlm = testing.build_tiny_qwen2_vl(root / "qwen2_vl")
    embedder = mmembed.load(vlm, device="cpu")
    attach_lora(embedder, ModelArguments(lora_r=2, lora_alpha=4))
    embedder.save(root / "lora", adapter_only=True)
    testing.sample_images(1)[0].save(root / "photo.jpg")
    return {"path/or/hub-id": str(text_model), "Qwen/Qwen2-VL-2B-Instruct": str(vlm),
            "path/to/lora": str(root / "lora"),
            "photo.jpg": str(root / "photo.jpg"), "out/my-embedder": str(root / "out" / "my-embedder")}


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, placeholders, tmp_path):
    code = _python_blocks()[index]
    for placeholder, local in placeholders.items():
        code = code.replace(f'"{placeholder}"', repr(local))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         check=False)
    assert run.returncode == 0, f"README python block {index} failed:\n{code}\n{run.stderr[-3000:]}"
