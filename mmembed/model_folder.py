"""Saved model folders: written whole and never at the cost of files mmembed did not write; read back with one
clear line naming the file and key for every problem.

Saving (:func:`write_folder`): every file is first written whole into a hidden staging folder: for a new target
beside it (``.<name>.mmembed-save-*``), renamed into place when all are complete, so the folder appears whole or not
at all; for an existing target inside it (``<folder>/.mmembed-save-*``: the same file system, and only the target
needs to be writable, e.g. a mounted volume), moved in file by file when all are complete. Such a move is not
all-or-nothing: before the first file moves, a marker (``mmembed_save_incomplete.json``) is written into the folder,
``mmembed_config.json`` is moved in last, and the marker is removed once the folder holds the new model alone. An
interruption while files are written leaves the old model as it was; one during the moves leaves the marker, and
:func:`check_complete` (called by ``Embedder.load``) refuses the folder with one line naming it; saving again
completes the folder. A process killed outright may leave its hidden staging folder behind (safe to delete).

``mmembed_config.json`` records the files the save wrote (``"files"``), and the marker those of an interrupted save;
a later save into the same folder may overwrite and remove those, and only those. A folder holding files of the same
names that no mmembed save wrote (a base model's own folder, a sentence-transformers download) is refused with
:class:`~mmembed.errors.OutputPathError` before any work.

Reading: :func:`read_json` and :func:`check_config` raise :class:`~mmembed.errors.ModelFolderError` naming the file
and the key (truncated JSON, a missing or unknown key, a value of the wrong type, a ``format_version`` from a newer
mmembed). :func:`quiet_transformers` keeps transformers' loading and saving free of progress bars and of a DeepSpeed
import (:func:`defer_deepspeed_import`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ModelFolderError, OutputPathError, is_int
from .files import check_output_folder, write_text

#: key of mmembed_config.json listing the files (relative paths; empty folders end in "/") the save wrote
FILES_KEY = "files"
#: the marker of a save into an existing folder whose files are being moved in (left there when it was interrupted)
INCOMPLETE_MARKER = "mmembed_save_incomplete.json"
#: names an mmembed save of an earlier version removed by name (before saves recorded their files)
LEGACY_REMOVABLE = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                    "1_Pooling/config.json", "model.safetensors", "model.safetensors.index.json",
                    "adapter_config.json", "adapter_model.safetensors")


# ------------------------------------------------------------------------------------------------ reading
def read_json(path: str | Path) -> Any:
    """The parsed JSON file ``path``; a truncated or corrupt file raises :class:`ModelFolderError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFolderError(f"{path}: not UTF-8 text (byte {exc.start}); the file is corrupt. Save the model "
                               f"again or restore the file.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}); the "
                               f"file is truncated or corrupt. Save the model again or restore the file.") from None


def check_complete(folder: str | Path) -> None:
    """Raise :class:`ModelFolderError` when ``folder`` holds the marker of an interrupted save (its files may mix two
    models)."""
    marker = Path(folder) / INCOMPLETE_MARKER
    if marker.is_file():
        raise ModelFolderError(f"{marker}: a save into this folder was interrupted while its files were moved in, so "
                               f"they may mix two models. Save the model into it again (or restore the folder from "
                               f"a copy).")


#: the keys of mmembed_config.json: (what the value must be, its check)
CONFIG_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "format_version": ("an integer", is_int),
    "template": ("an object (the prompt template)", lambda v: isinstance(v, dict)),
    "max_length": ("an integer >= 1 or null", lambda v: v is None or is_int(v, 1)),
    "padding_side": ('"left", "right" or null', lambda v: v in (None, "left", "right")),
    "layer": ("an integer", is_int),
    "pooling": ("a pooling mode name, an object or null", lambda v: v is None or isinstance(v, (str, dict))),
    "normalize": ("true or false", lambda v: isinstance(v, bool)),
    "truncate_dim": ("an integer >= 1 or null", lambda v: v is None or is_int(v, 1)),
    "prompts": ("an object of prompt names to strings",
                lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values())),
    "default_prompt_name": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "rationale": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "quantize": ('"int8"', lambda v: v == "int8"),
    "backend": ('"onnx"', lambda v: v == "onnx"),
    "base_model": ("a string or null", lambda v: v is None or isinstance(v, str)),
    FILES_KEY: ("a list of file names", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)),
}
REQUIRED_KEYS = ("template",)


def check_config(path: Path, data: Any, format_version: int) -> dict:
    """``data`` (read from ``path``) as a checked mmembed config: an object of known keys whose values have the
    right types, and a ``format_version`` this mmembed reads. Raises :class:`ModelFolderError` naming the key."""
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object of settings, found {type(data).__name__}. Save the "
                               f"model again or restore the file.")
    version = data.get("format_version", 1)
    if not is_int(version, 1):
        raise ModelFolderError(f"{path}: key 'format_version' is {json.dumps(version)}; it must be an integer >= 1.")
    if version > format_version:
        raise ModelFolderError(f"{path} was written by a newer mmembed: format {version}, this version reads "
                               f"{format_version}; upgrade mmembed (pip install -U mmembed).")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ModelFolderError(f"{path}: unknown key {unknown[0]!r} (known keys: {', '.join(CONFIG_KEYS)}). Remove "
                               f"it, or load the folder with the mmembed version that wrote it.")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelFolderError(f"{path}: key {missing[0]!r} is missing; the file is incomplete. Save the model "
                               f"again or restore the file.")
    for key, value in data.items():
        what, ok = CONFIG_KEYS[key]
        if not ok(value):
            raise ModelFolderError(f"{path}: key {key!r} is {json.dumps(value)[:80]}; it must be {what}. Fix the "
                                   f"file or save the model again.")
    return dict(data)


def checked_value(path: Path, key: str, build: Callable[[Any], Any], value: Any) -> Any:
    """``build(value)`` for the value of ``key`` in ``path``; its TypeError / ValueError becomes one
    :class:`ModelFolderError` line naming the file and key."""
    try:
        return build(value)
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{path}: key {key!r} is invalid: {str(exc).rstrip('.')}. Fix the file or save "
                               f"the model again.") from None


# ------------------------------------------------------------------------------------------------ writing
def _listing(folder: Path) -> set[str]:
    """Files (and empty folders, ending in "/") below ``folder``, as relative POSIX paths."""
    names = set()
    for path in folder.rglob("*"):
        if path.is_file() or (path.is_dir() and not any(path.iterdir())):
            names.add(path.relative_to(folder).as_posix() + ("/" if path.is_dir() else ""))
    return names


def _safe_names(names: Any) -> set[str] | None:
    """``names`` (a recorded list of relative paths) without any that leave the folder; None when it is no list."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return {n for n in names if ".." not in Path(n).parts and not Path(n).is_absolute()}


def _interrupted_files(folder: Path) -> set[str]:
    """The files an interrupted save recorded in the marker in ``folder`` (none when there is no marker)."""
    try:
        recorded = json.loads((folder / INCOMPLETE_MARKER).read_text(encoding="utf-8")).get(FILES_KEY)
    except (OSError, ValueError, AttributeError):
        return set()
    return _safe_names(recorded) or set()


def _earlier_save(folder: Path, config_name: str) -> tuple[set[str] | None, set[str]]:
    """``(may_overwrite, may_remove)`` for an earlier save in ``folder``: the files an mmembed save recorded there
    (None: any name, for a folder saved before records existed) and those an interrupted save recorded in its marker,
    or empty sets when mmembed wrote nothing there."""
    interrupted = _interrupted_files(folder)
    config = folder / config_name
    if not config.is_file():
        return interrupted, interrupted
    try:
        recorded = _safe_names(json.loads(config.read_text(encoding="utf-8")).get(FILES_KEY))
    except (ValueError, AttributeError):  # a corrupt record: overwrite what it names, remove nothing
        return None, interrupted
    if recorded is not None:
        return recorded | interrupted, recorded | interrupted
    return None, interrupted | {n for n in LEGACY_REMOVABLE if (folder / n).is_file()}


def check_target(folder: Path, names: Iterable[str], config_name: str) -> None:
    """Raise :class:`OutputPathError` when ``folder`` is a file, cannot be written, or holds any of ``names`` that
    no earlier mmembed save wrote there."""
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"'{folder}' is a file; give a folder to save the model into.")
    check_output_folder(folder, what="model folder")
    may_overwrite, _ = _earlier_save(folder, config_name)
    if may_overwrite is None or not folder.is_dir():
        return
    foreign = sorted(n for n in names if (folder / n.rstrip("/")).exists() and n not in may_overwrite
                     and not (n.endswith("/") and (folder / n).is_dir()))
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise OutputPathError(f"'{folder}' holds files mmembed did not write ({shown}); saving there would "
                              f"overwrite them. Save into a new or empty folder, or into one an earlier "
                              f"Embedder.save wrote.")


def _move_in(stage: Path, folder: Path, written: set[str], config_name: str, may_remove: set[str]) -> None:
    """Move the staged files into the existing ``folder`` (``config_name`` last) between writing and removing the
    marker, then remove the files of ``may_remove`` this save did not write."""
    marker = folder / INCOMPLETE_MARKER
    pending = sorted(written | _interrupted_files(folder))  # a save interrupted again leaves every unrecorded file
    write_text(marker, json.dumps({"note": "an mmembed save into this folder did not complete; save the model "
                                           "into it again", FILES_KEY: pending}, indent=1) + "\n")
    for name in sorted(written - {config_name}, key=lambda n: (n.endswith("/"), n)) + [config_name]:
        target = folder / name.rstrip("/")
        if name.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, target)
    for name in sorted(may_remove - written, reverse=True):  # files before their (then empty) folders
        stale = folder / name.rstrip("/")
        with contextlib.suppress(OSError):
            stale.rmdir() if stale.is_dir() else stale.unlink()
        with contextlib.suppress(OSError):  # a sub-folder the removal emptied (e.g. 1_Pooling/)
            if stale.parent != folder and not any(stale.parent.iterdir()):
                stale.parent.rmdir()
    marker.unlink()


def write_folder(folder: str | Path, config_name: str, config: dict, write: Callable[[Path], None],
                 expected: Iterable[str] = ()) -> Path:
    """Save a model folder: ``write(staging)`` writes every file but ``config_name``; then ``config`` (plus the list
    of written files) is written and the files are moved into ``folder``, where the files an earlier mmembed save
    recorded and this one did not write are removed. ``expected`` names files the save will write, checked against
    ``folder`` before any work (:func:`check_target`; the written files are checked again before moving).

    A new ``folder`` is the staging folder (made beside it) renamed: whole or absent. An existing one is staged
    inside itself and filled file by file under the :data:`INCOMPLETE_MARKER` (see the module docstring)."""
    folder = Path(folder).expanduser()
    check_target(folder, [*expected, config_name], config_name)
    tag = f"mmembed-save-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    existing = folder.is_dir()
    where = folder.absolute()  # "." has no name of its own (and exists)
    stage = folder / f".{tag}" if existing else where.parent / f".{where.name}.{tag}"
    stage.mkdir(parents=True)
    try:
        write(stage)
        written = _listing(stage) | {config_name}
        config = {**config, FILES_KEY: sorted(written)}
        (stage / config_name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        check_target(folder, written, config_name)
        if not existing:
            try:
                stage.rename(folder)  # the whole folder appears at once
                return folder
            except OSError:
                if not folder.is_dir():
                    raise
                # another process made it meanwhile (under DDP, rank 1 writes its RNG state into the checkpoint
                # folder while rank 0 saves the model): fill it as an existing folder
                check_target(folder, written, config_name)
        _, may_remove = _earlier_save(folder, config_name)
        _move_in(stage, folder, written, config_name, may_remove)
        return folder
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ quiet loading
def _global_names(code: Any) -> set[str]:
    """The names ``code`` (and the functions defined inside it) look up as globals or attributes."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _global_names(const)
    return names


def _sole_reader(module: Any, name: str, reader: Any) -> bool:
    """Whether ``reader`` is a function of ``module`` that reads its global ``name``, and no other function of
    ``module`` reads it (so replacing the global changes ``reader`` alone)."""
    own = [f for f in vars(module).values() if inspect.isfunction(f) and f.__globals__ is vars(module)]
    return [f for f in own if name in _global_names(f.__code__)] == [reader]


def defer_deepspeed_import() -> None:
    """Make accelerate's ``extract_model_from_parallel`` (behind every ``save_pretrained`` and every
    ``Accelerator.unwrap_model``) look for a DeepSpeed engine only once ``deepspeed`` has been imported.

    It imports ``deepspeed`` whenever the package is installed, only to test ``isinstance(model, DeepSpeedEngine)``,
    and that import prints "Setting accelerator to CPU" on stdout. While ``deepspeed`` is not imported no model can
    be a DeepSpeed engine, so the result is the same; a run with a DeepSpeed config imports it first. Installed once
    for the process, and only where ``accelerate.utils.other.extract_model_from_parallel`` reads the module's global
    ``is_deepspeed_available`` and no other function there does (checked with accelerate 1.16.0); where accelerate
    is laid out otherwise, nothing is patched (a save may then print DeepSpeed's line)."""
    try:
        import accelerate.utils.other as accelerate_other
    except ImportError:
        return
    original = getattr(accelerate_other, "is_deepspeed_available", None)
    reader = getattr(accelerate_other, "extract_model_from_parallel", None)
    if original is None or getattr(original, "mmembed_deferred", False) or not inspect.isfunction(reader) \
            or not _sole_reader(accelerate_other, "is_deepspeed_available", reader):
        return

    def is_deepspeed_available() -> bool:
        return "deepspeed" in sys.modules and original()

    is_deepspeed_available.mmembed_deferred = True  # type: ignore[attr-defined]
    accelerate_other.is_deepspeed_available = is_deepspeed_available


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block transformers' own progress bars ("Loading weights", "Writing model shards") are off (hub
    download bars stay on), and saving does not import DeepSpeed (:func:`defer_deepspeed_import`)."""
    from transformers.utils import logging as hf_logging

    defer_deepspeed_import()
    hooks = hasattr(hf_logging, "set_tqdm_hook")  # transformers >= 5.25; before it, all bars go off for a while
    bars = hf_logging.is_progress_bar_enabled()
    if hooks:
        previous_hook = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
    else:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hooks:
            hf_logging.set_tqdm_hook(previous_hook)
        elif bars:
            hf_logging.enable_progress_bar()
