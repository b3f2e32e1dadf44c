"""Saved model folders: nothing lost, clear errors naming file and key, the GGUF cache keyed by content, unreachable
hub ids failing fast, quiet loading and saving."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from support import free_port

import mmembed
from mmembed import files, gguf, lora, model_folder, st_format
from mmembed.errors import ModelFolderError, ModelNotFoundError, OutputPathError
from mmembed.inputs import PromptTemplate

TEXTS = ["A man is playing a guitar.", "The stock market fell sharply."]


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _with_random_lora(model):
    from peft import LoraConfig

    model.backbone.model = lora.attach(model.backbone.model, LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.backbone.model.eval()
    return model


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".mmembed-save-" in p.name]


# ------------------------------------------------------------------------------------------------ nothing lost
def test_adapter_saved_into_its_base_folder_is_refused_and_the_base_survives(qwen2_path, tmp_path):
    """The probe: ``mmembed.load(checkpoint, base_model=base).save(base, adapter_only=True)`` deleted
    ``base/model.safetensors``; now it is refused and every byte of the base folder stays."""
    base = tmp_path / "base"
    shutil.copytree(qwen2_path, base)
    _with_random_lora(mmembed.load(str(base), dtype="float32")).save(tmp_path / "checkpoint", adapter_only=True)
    model = mmembed.load(str(tmp_path / "checkpoint"), base_model=str(base))
    before = _snapshot(base)
    with pytest.raises(OutputPathError, match=r"is the folder of the adapter's base model.*Save it into another"):
        model.save(base, adapter_only=True)
    with pytest.raises(OutputPathError, match=r"holds files mmembed did not write \(config\.json, model\.safetensors"):
        model.save(base)  # a merged export over the base's own files
    assert _snapshot(base) == before
    assert _leftovers(tmp_path) == []


def test_a_folder_of_foreign_files_is_refused_before_any_work(qwen2_path, tmp_path):
    """A download (here an ST-style folder that mmembed did not write) is never overwritten."""
    foreign = tmp_path / "download"
    shutil.copytree(qwen2_path, foreign)
    (foreign / "modules.json").write_text("[]")
    before = _snapshot(foreign)
    model = _with_random_lora(mmembed.load(str(qwen2_path), dtype="float32"))
    with pytest.raises(OutputPathError, match=r"'.*download' holds files mmembed did not write \(tokenizer\.json, "
                                              r"tokenizer_config\.json\); saving there would overwrite them"):
        model.save(foreign, adapter_only=True)
    assert _snapshot(foreign) == before
    file_target = tmp_path / "file"
    file_target.write_text("x")
    with pytest.raises(OutputPathError, match="is a file; give a folder"):
        model.save(file_target)


def test_a_later_save_removes_only_the_files_an_earlier_save_wrote(qwen2_path, tmp_path):
    folder = tmp_path / "m"
    mmembed.load(str(qwen2_path), pooling="mean", dtype="float32").save(folder)  # ST-compatible: ST files
    assert (folder / "modules.json").is_file()
    recorded = json.loads((folder / "mmembed_config.json").read_text())["files"]
    assert set(recorded) == {n for n in _snapshot(folder)} | {"2_Normalize/"}
    ours = {"notes.txt": b"mine", "README.md": b"# my card", "training_args.bin": b"\x00\x01",
            "checkpoint-5/model.safetensors": b"old"}
    for name, data in ours.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)

    chat = mmembed.load(str(qwen2_path), template=PromptTemplate(chat=True), dtype="float32")
    chat.save(folder)  # no ST equivalent: the native ST files it wrote before go (mmembed's ST module instead)
    assert not (folder / "sentence_bert_config.json").exists() and not (folder / "1_Pooling" / "config.json").exists()
    adapter = _with_random_lora(chat)
    adapter.save(folder, adapter_only=True)  # the merged weights it wrote before go
    assert not (folder / "model.safetensors").exists() and (folder / "adapter_model.safetensors").is_file()
    assert {name: (folder / name).read_bytes() for name in ours} == ours
    assert np.abs(mmembed.load(str(folder)).encode(TEXTS) - adapter.encode(TEXTS)).max() < 1e-5
    recorded = set(json.loads((folder / "mmembed_config.json").read_text())["files"])
    assert recorded == (set(_snapshot(folder)) - set(ours)) | {"2_Normalize/"}


def test_a_folder_saved_before_files_were_recorded_is_still_overwritten(qwen2_path, tmp_path):
    folder = tmp_path / "old"
    mmembed.load(str(qwen2_path), pooling="mean", dtype="float32").save(folder)
    config = json.loads((folder / "mmembed_config.json").read_text())
    del config["files"]  # as written by mmembed before this change
    (folder / "mmembed_config.json").write_text(json.dumps(config))
    (folder / "notes.txt").write_text("mine")
    chat = mmembed.load(str(qwen2_path), template=PromptTemplate(chat=True), dtype="float32")
    chat.save(folder)
    assert not (folder / "sentence_bert_config.json").exists() and (folder / "notes.txt").read_text() == "mine"
    assert np.array_equal(mmembed.load(str(folder)).encode(TEXTS), chat.encode(TEXTS))


def test_an_interrupted_save_leaves_the_old_model_byte_for_byte(qwen2_path, tmp_path, monkeypatch):
    """Ctrl-C while the new model is being written (after its weights, before its ST files): the folder keeps the
    old model's exact bytes, a new folder does not appear, and no staging folder is left."""
    folder = tmp_path / "m"
    old = mmembed.load(str(qwen2_path), pooling="last", dtype="float32")
    old.save(folder)
    before = _snapshot(folder)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(st_format, "write", interrupted)
    new = _with_random_lora(mmembed.load(str(qwen2_path), pooling="mean", dtype="float32"))
    for target in (folder, tmp_path / "new"):
        with pytest.raises(KeyboardInterrupt):
            new.save(target)
    assert _snapshot(folder) == before
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == [] and _leftovers(folder) == []
    monkeypatch.undo()
    new.save(folder)  # completes: the new model, loadable
    assert np.abs(mmembed.load(str(folder)).encode(TEXTS) - new.encode(TEXTS)).max() < 1e-5


def test_an_interrupt_while_moving_into_an_existing_folder_is_refused_at_load(qwen2_path, tmp_path, monkeypatch):
    """Ctrl-C after two of the new files were moved in: the folder mixes two models, so it keeps the marker and load
    refuses it with one line; the same save, run again, completes it (the interrupted save's files may be overwritten
    and the old model's weights go)."""
    folder = tmp_path / "m"
    mmembed.load(str(qwen2_path), pooling="last", dtype="float32").save(folder)
    new = _with_random_lora(mmembed.load(str(qwen2_path), pooling="mean", dtype="float32"))
    moved, replace = [], os.replace

    def interrupted(src, dst):
        if ".mmembed-save-" in str(src) and ".mmembed-save-" not in str(dst):  # a move, not a staged write
            if len(moved) == 2:
                raise KeyboardInterrupt
            moved.append(Path(dst).relative_to(folder).as_posix())
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(folder, adapter_only=True)
    monkeypatch.undo()
    assert moved == ["1_Pooling/mmembed_pooling.json", "adapter_config.json"]
    assert (folder / model_folder.INCOMPLETE_MARKER).is_file() and _leftovers(folder) == []
    with pytest.raises(ModelFolderError, match=r"^[^\n]*m/mmembed_save_incomplete\.json: a save into this folder was "
                                               r"interrupted while its files were moved in, so they may mix two models\. "
                                               r"Save the model into it again \(or restore the folder from a copy\)\.$"):
        mmembed.load(str(folder))
    new.save(folder, adapter_only=True)
    assert not (folder / model_folder.INCOMPLETE_MARKER).exists() and not (folder / "model.safetensors").exists()
    assert np.abs(mmembed.load(str(folder)).encode(TEXTS) - new.encode(TEXTS)).max() < 1e-5


def test_an_existing_folder_is_staged_inside_itself_a_new_one_beside_it(tmp_path):
    """Only the target must be writable and on one file system with the staging folder (a mounted volume such as
    ``/output``, whose parent may be read-only or another file system)."""
    stages = []

    def write(stage: Path) -> None:
        stages.append(stage)
        (stage / "weights.bin").write_bytes(b"w")

    mounted = tmp_path / "output"
    mounted.mkdir()
    for folder in (mounted, tmp_path / "new"):
        model_folder.write_folder(folder, "mmembed_config.json", {"template": {}}, write, ["weights.bin"])
    assert [s.parent for s in stages] == [mounted, tmp_path]
    assert stages[0].name.startswith(".mmembed-save-") and stages[1].name.startswith(".new.mmembed-save-")
    for folder in (mounted, tmp_path / "new"):
        assert sorted(p.name for p in folder.iterdir()) == ["mmembed_config.json", "weights.bin"]


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    private = tmp_path / "scores.json"
    private.write_text("old")
    private.chmod(0o600)
    files.write_text(private, "new")
    assert private.read_text() == "new" and stat.S_IMODE(private.stat().st_mode) == 0o600
    umask = os.umask(0o027)
    try:
        files.write_text(tmp_path / "fresh.json", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o640


# ------------------------------------------------------------------------------------------------ clear errors
def _edit_config(key, value):
    def edit(folder: Path) -> None:
        file = folder / "mmembed_config.json"
        config = json.loads(file.read_text())
        if value is KeyError:
            del config[key]
        else:
            config[key] = value
        file.write_text(json.dumps(config))
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda f: (f / "mmembed_config.json").write_text((f / "mmembed_config.json").read_text()[:120]),
     r"mmembed_config\.json: not valid JSON \(.*line \d+, column \d+\); the file is truncated or corrupt"),
    (_edit_config("template", KeyError), r"mmembed_config\.json: key 'template' is missing"),
    (_edit_config("truncate_dim", "8"), r"mmembed_config\.json: key 'truncate_dim' is \"8\"; it must be an integer"),
    (_edit_config("colour", "red"), r"mmembed_config\.json: unknown key 'colour' \(known keys: format_version, "),
    (_edit_config("format_version", 99), r"written by a newer mmembed: format 99, this version reads 1; upgrade"),
    (_edit_config("pooling", {"mode": "max"}), r"mmembed_config\.json: key 'pooling' is invalid: unknown pooling"),
    (lambda f: (f / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096)),
     r"model\.safetensors: cannot be read \(.*\); the file is corrupt or truncated"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:50_000]),
     r"model\.safetensors: cannot be read \(.*\); the file is corrupt or truncated"),
    (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
     r"has no usable tokenizer: tokenizer\.json and tokenizer_config\.json are missing"),
    (lambda f: (f / "config.json").write_text('{"model_type": '), r"config\.json: not valid JSON"),
    (lambda f: ((f / "mmembed_config.json").unlink(), (f / "modules.json").write_text("[{")),
     r"modules\.json: not valid JSON"),  # a sentence-transformers folder
], ids=["truncated", "no-template", "dim-string", "unknown-key", "format-99", "bad-pooling", "random-weights",
        "truncated-weights", "no-tokenizer", "truncated-hf-config", "truncated-st-modules"])
def test_a_broken_folder_is_one_line_naming_file_and_key(qwen2_path, tmp_path, edit, message):
    folder = tmp_path / "m"
    mmembed.load(str(qwen2_path), dtype="float32").save(folder)
    edit(folder)
    with pytest.raises(ModelFolderError, match=message) as info:
        mmembed.load(str(folder))
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_a_broken_adapter_folder_names_the_file(qwen2_path, tmp_path):
    folder = tmp_path / "adapter"
    _with_random_lora(mmembed.load(str(qwen2_path), dtype="float32")).save(folder, adapter_only=True)
    weights = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ModelFolderError, match=r"adapter_model\.safetensors: cannot be read \(.*\); the file is "
                                               r"corrupt or truncated"):
        mmembed.load(str(folder))
    (folder / "adapter_config.json").write_text("{")
    with pytest.raises(ModelFolderError, match=r"adapter_config\.json: not valid JSON"):
        mmembed.load(str(folder))


def test_a_folder_copied_without_tokenizer_files_is_refused_at_load(qwen2_path, tmp_path):
    """Before: it loaded and ``encode(["a"])`` raised IndexError (an empty tokenizer gives zero tokens)."""
    copy = tmp_path / "copy"
    shutil.copytree(qwen2_path, copy, ignore=shutil.ignore_patterns("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(ModelFolderError, match=r"'.*copy' has no usable tokenizer: tokenizer\.json and "
                                               r"tokenizer_config\.json are missing\. Copy the tokenizer files"):
        mmembed.load(str(copy))
    (copy / "tokenizer_config.json").write_bytes((qwen2_path / "tokenizer_config.json").read_bytes())
    with pytest.raises(ModelFolderError, match=r"has no usable tokenizer: tokenizer\.json is missing"):
        mmembed.load(str(copy))


def test_paths_and_unknown_hub_ids_fail_at_once(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no model at '.*nothing/here': there is no such file or folder"):
        mmembed.load(str(tmp_path / "nothing" / "here"))
    with pytest.raises(ModelNotFoundError, match=r"no model at 'someone/not-a-model': it is not a local folder, and "
                                                 r"HF_HUB_OFFLINE=1 is set and it is not in the hub cache"):
        mmembed.load("someone/not-a-model")


# ------------------------------------------------------------------------------------------------ GGUF cache
def test_gguf_cache_is_keyed_by_content_not_path(tmp_path):
    root = tmp_path / "cache"
    data = np.random.default_rng(0).bytes(1 << 16)
    first, second, other = tmp_path / "env1" / "m.gguf", tmp_path / "env2" / "m.gguf", tmp_path / "env3" / "m.gguf"
    for path, content in ((first, data), (second, data), (other, data[:-1] + b"!")):
        path.parent.mkdir()
        path.write_bytes(content)
    expected = hashlib.sha256(data).hexdigest()
    assert gguf.converted_path(first, root) == gguf.converted_path(second, root) == root / f"m-{expected[:16]}"
    assert gguf.converted_path(other, root) != gguf.converted_path(first, root)
    os.utime(second, ns=(10**18, 10**18))  # touched, same bytes: same folder
    assert gguf.converted_path(second, root) == gguf.converted_path(first, root)

    index = json.loads((root / gguf.INDEX_NAME).read_text())
    assert index[str(first.resolve())]["sha256"] == expected
    # warm calls read the index, not the file: same size and mtime, other bytes -> the remembered hash
    stat = first.stat()
    first.write_bytes(data[::-1])
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert gguf.content_hash(first, root) == expected
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a real change moves the mtime: hashed again
    assert gguf.content_hash(first, root) == hashlib.sha256(data[::-1]).hexdigest()


def test_a_copy_of_the_default_gguf_shares_its_converted_folder(tmp_path, monkeypatch):
    """A copy of the wheel's GGUF (another environment) finds the folder of the same name: no second conversion.
    The copy is looked up in a cache of its own (holding a link to the converted folder), so the user's cache index
    never records a test's temporary path."""
    from mmembed import defaults

    try:
        original = defaults.gguf_path()
    except ModelNotFoundError:
        pytest.skip(f"needs {defaults.WHEEL}")
    folder = gguf.convert_gguf(original)  # converted once per machine (no-op when warm)
    index = folder.parent / gguf.INDEX_NAME
    index_before = index.read_bytes() if index.is_file() else None
    cache = tmp_path / "cache"
    (cache / "gguf").mkdir(parents=True)
    (cache / "gguf" / folder.name).symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv("MMEMBED_CACHE", str(cache))
    copy = tmp_path / "another-env" / original.name
    copy.parent.mkdir()
    shutil.copy(original, copy)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert gguf.convert_gguf(copy) == cache / "gguf" / folder.name  # no second conversion, no second copy
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == sorted([folder.name, gguf.INDEX_NAME])
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert (index.read_bytes() if index.is_file() else None) == index_before


def test_old_style_gguf_folders_of_the_same_stem_are_removed_from_the_cache_only(tmp_path, monkeypatch):
    """Folders of the earlier naming (``<stem>-<12 hex>``, one per environment) in mmembed's cache are removed once
    the file's folder of the current naming is there; other stems, incomplete folders and other roots stay."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMEMBED_CACHE", str(cache))
    model = tmp_path / "env" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(np.random.default_rng(0).bytes(1 << 12))
    current = gguf.converted_path(model)
    current.mkdir(parents=True)
    (current / "config.json").write_text("{}")  # as converted (no conversion needed for the lookup)
    old = {name: cache / "gguf" / name for name in ("m-0123456789ab", "m-fedcba987654", "other-0123456789ab",
                                                    "m-0123456789abc", "m-aaaaaaaaaaaa")}
    for name, folder in old.items():
        folder.mkdir()
        if name != "m-aaaaaaaaaaaa":  # an incomplete folder: not known to be a conversion
            (folder / "config.json").write_text("{}")
    own_root = tmp_path / "own-root"  # a root given by the caller: never cleaned
    for name in ("m-0123456789ab", current.name):
        (own_root / name).mkdir(parents=True)
        (own_root / name / "config.json").write_text("{}")
    assert gguf.convert_gguf(model, root=own_root) == own_root / current.name
    assert (own_root / "m-0123456789ab").is_dir()
    assert gguf.convert_gguf(model) == current
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == sorted(
        [current.name, gguf.INDEX_NAME, "other-0123456789ab", "m-0123456789abc", "m-aaaaaaaaaaaa"])


# ------------------------------------------------------------------------------------------------ subprocesses
def _run(script: str, *args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=Path(__file__).resolve().parents[2], check=False)


HUB_SCRIPT = """
import json, sys, time
import mmembed, mmembed.embedder  # imported first: the time below is the load's alone
for name in sys.argv[1:]:
    start = time.perf_counter()
    try:
        mmembed.load(name)
        result = "loaded"
    except Exception as exc:
        result = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"name": name, "result": result, "seconds": time.perf_counter() - start}))
"""




def test_unreachable_hub_fails_fast_and_cached_models_still_load(qwen2_path, tmp_path):
    """Online mode (HF_HUB_OFFLINE=0) with a hub that cannot be reached: an unknown id fails within seconds (23-27 s
    of retries before), a model in the hub cache loads."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(qwen2_path, snapshot)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_CACHE": str(cache)}
    run = _run(HUB_SCRIPT, "someone/not-a-model", "someone/tiny", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    missing, cached = (json.loads(line) for line in run.stdout.splitlines())
    assert missing["result"].startswith("ModelNotFoundError: no model at 'someone/not-a-model': it is not a local "
                                        "folder, and the hub (http://127.0.0.1:")
    assert "cannot be reached and it is not in the hub cache" in missing["result"]
    assert missing["seconds"] < 10  # generous for a busy machine; it was 23-28 s of retries
    assert cached["result"] == "loaded" and cached["seconds"] < 20 and "Retrying" not in run.stderr


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


def test_a_reachable_hub_is_still_asked():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
        run = _run(HUB_SCRIPT, "someone/not-a-model", env=env)
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[0])["result"]
    assert result.startswith("ModelNotFoundError: no model at 'someone/not-a-model': it is not a local folder, and "
                             "the hub did not give it (")


QUIET_SCRIPT = """
import sys
import mmembed
model = mmembed.load(sys.argv[1])  # an adapter-only folder: base model + PEFT adapter + tokenizer
model.encode(["hi"])
model.save(sys.argv[2])  # a merged export: save_pretrained
model.save(sys.argv[3], adapter_only=True)
assert "deepspeed" not in sys.modules, "a save imported deepspeed"
"""


def test_loading_encoding_and_saving_print_nothing(qwen2_path, tmp_path):
    """No "Loading weights" bar, no FutureWarning from PEFT's wrapping, no DeepSpeed import (whose
    "Setting accelerator to CPU" went to stdout) from a save."""
    _with_random_lora(mmembed.load(str(qwen2_path), dtype="float32")).save(tmp_path / "adapter", adapter_only=True)
    run = _run(QUIET_SCRIPT, str(tmp_path / "adapter"), str(tmp_path / "merged"), str(tmp_path / "again"))
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_deepspeed_import_is_deferred_only_where_one_accelerate_function_reads_the_flag(tmp_path):
    """The patch of accelerate's module-wide ``is_deepspeed_available`` is made only while the function it is meant
    for is its sole reader (as in the installed accelerate); another layout is left unpatched."""
    import importlib.util

    import accelerate.utils.other as accelerate_other

    model_folder.defer_deepspeed_import()
    assert accelerate_other.is_deepspeed_available.mmembed_deferred
    (tmp_path / "layout.py").write_text(
        "def is_deepspeed_available():\n    return True\n\n\ndef extract(model):\n    return is_deepspeed_available()"
        "\n\n\ndef other():\n    return [is_deepspeed_available() for _ in '1']\n")
    spec = importlib.util.spec_from_file_location("layout", tmp_path / "layout.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    assert not model_folder._sole_reader(layout, "is_deepspeed_available", layout.extract)  # read in a nested scope
    del layout.other
    assert model_folder._sole_reader(layout, "is_deepspeed_available", layout.extract)


def test_default_encode_prints_nothing_with_a_warm_cache():
    from mmembed import defaults

    try:
        gguf.convert_gguf(defaults.gguf_path())  # warm the cache (a no-op when it is)
    except ModelNotFoundError:
        pytest.skip(f"needs {defaults.WHEEL}")
    run = _run("import mmembed; mmembed.encode(['hi'])")
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
