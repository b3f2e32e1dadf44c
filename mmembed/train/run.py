"""The start and the end of a recipe run, the same for every recipe.

- :func:`parse_recipe_args`: YAML config plus command-line overrides (TRL's parser), the values checked at parse
  time, then :func:`start_run`.
- :func:`start_run`: seeds everything before the model is built (LoRA init, data order), resolves
  ``resume_from_checkpoint`` (``true``: the latest checkpoint) and refuses to start over what an earlier run wrote
  (checkpoints, a finished run's ``final`` folders, its model card) unless ``--overwrite_output_dir`` (which deletes
  them).
- :func:`run_recipe`: runs a recipe's ``main``; a user error (:class:`~mmembed.errors.MMEmbedError`) is printed as one
  line on stderr by the main process and the run exits with code 2; a finished run gets mmembed's model card.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import set_seed
from transformers.hf_argparser import string_to_bool

from ..errors import ConfigError, MMEmbedError, RunStateError, one_line
from ..progress import interactive_stream
from . import card, distributed

logger = logging.getLogger(__name__)

OVERWRITE = "overwrite_output_dir"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint folder: a folder with it is complete
FINAL = "final"  # a finished run's model folder: <output_dir>/final, or <output_dir>/<stage>/final
MODEL_CONFIG = "mmembed_config.json"  # written last into a saved model folder: a folder with it is complete
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def parse_recipe_args(parser: Any, argv: Sequence[str] | None = None) -> tuple:
    """Parse a recipe's dataclasses (``parser`` is a ``trl.TrlParser``) from ``--config`` YAML plus overrides and
    start the run (:func:`start_run` on the ``TrainingArguments`` among them). Adds ``--overwrite_output_dir``
    (start over in an output folder that holds an earlier run; transformers 5 has no such argument) unless a
    dataclass of the parser has it. Before parsing (``TrainingArguments`` sets up the devices as it is made), a
    CPU-only multi-process run is made really distributed (:func:`~mmembed.train.distributed.use_cpu_processes`).
    ``disable_tqdm`` defaults to on where stderr is not a terminal (the per-step log lines remain)."""
    if not any(action.dest == OVERWRITE for action in parser._actions):
        parser.add_argument(f"--{OVERWRITE}", type=string_to_bool, nargs="?", const=True, default=False,
                            help="start over in an output_dir that holds an earlier run, deleting its checkpoints, "
                                 "final folder(s) and model card (default: refuse)")
    if any(action.dest == "disable_tqdm" for action in parser._actions):
        # the Trainer's bar only where it has a live display: in a log file the per-step lines say the same
        parser.set_defaults(disable_tqdm=not interactive_stream())
    distributed.use_cpu_processes()
    values = list(_parse(parser, argv))
    overwrite = False
    for value in values:
        if isinstance(value, argparse.Namespace) and hasattr(value, OVERWRITE):
            overwrite = bool(getattr(value, OVERWRITE))
            delattr(value, OVERWRITE)
    values = [v for v in values if not (isinstance(v, argparse.Namespace) and not vars(v))]
    training_args = next((v for v in values if hasattr(v, "output_dir") and hasattr(v, "seed")), None)
    if training_args is not None:
        start_run(training_args, overwrite_output_dir=overwrite or bool(getattr(training_args, OVERWRITE, False)))
    card.remember_args(values)
    return tuple(values)


def _parse(parser: Any, argv: Sequence[str] | None) -> tuple:
    """``parser.parse_args_and_config`` with every mistake in the command line or the YAML config (an unknown key, a
    value argparse cannot convert, a missing or malformed config file, a value the dataclasses refuse) as one-line
    :class:`ConfigError` instead of argparse's usage block or a traceback."""
    import yaml

    def error(message: str) -> None:
        raise ConfigError(f"{message} (see {Path(parser.prog).name} --help)")

    parser.error = error  # argparse calls self.error: one line instead of the usage block and exit
    try:
        return parser.parse_args_and_config(list(argv) if argv is not None else None)
    except MMEmbedError:
        raise
    except FileNotFoundError as exc:
        raise ConfigError(f"--config {exc.filename}: no such file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: not valid YAML ({one_line(exc)}).") from None
    except ValueError as exc:
        message = one_line(exc)
        for pattern, where in ((r"Unknown arguments from config file: (\[.*?\])", "the config file has keys"),
                               (r"Some specified arguments are not used by the HfArgumentParser: (\[.*?\])",
                                "the command line has options")):
            unknown = re.match(pattern, message)
            if unknown:
                keys = [k.lstrip("-") for k in re.findall(r"'(--[^']+)'", unknown.group(1))] or [unknown.group(1)]
                message = (f"{where} that are not options of this recipe: {', '.join(keys)}; remove or rename them "
                           f"(see {Path(parser.prog).name} --help)")
        raise ConfigError(message) from None


def start_run(training_args: Any, overwrite_output_dir: bool = False) -> None:
    """Check the output folder and seed every generator from ``training_args.seed`` (before the model and its LoRA
    adapter are built, so that one seed fixes the LoRA init, the dropout and the data order).

    ``resume_from_checkpoint`` is resolved by :func:`resolve_resume` (``true``: the latest checkpoint). Without it, an
    ``output_dir`` that holds an earlier run (:func:`earlier_run`: checkpoints, a finished run's ``final`` folders)
    is refused with a one-line :class:`RunStateError` naming the choices, unless ``overwrite_output_dir``: then the
    main process deletes what the earlier run wrote (those folders and its model card) and the run starts over."""
    output_dir = Path(training_args.output_dir)
    resume = resolve_resume(output_dir, training_args.resume_from_checkpoint)
    training_args.resume_from_checkpoint = resume
    earlier = [] if resume else earlier_run(output_dir)
    if earlier and not overwrite_output_dir:
        raise RunStateError(_refusal(output_dir, earlier))
    if earlier and training_args.process_index == 0:
        logger.warning("--%s: deleting %s of an earlier run in %s", OVERWRITE,
                       ", ".join(str(p.relative_to(output_dir)) for p in earlier), output_dir)
        for path in earlier:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    set_seed(training_args.seed)


def earlier_run(output_dir: str | Path) -> list[Path]:
    """What an earlier run wrote into ``output_dir``: its ``checkpoint-<step>`` folders (also ``<stage>/...`` of a
    staged recipe), its finished model folders (``final`` and ``<stage>/final`` holding ``mmembed_config.json``),
    and then, when there is any of those, the model card it wrote (``README.md``, mmembed's)."""
    root = Path(output_dir)
    folders = checkpoint_folders(root)
    if root.is_dir():
        folders += sorted(f.parent for pattern in (f"{FINAL}/{MODEL_CONFIG}", f"*/{FINAL}/{MODEL_CONFIG}")
                          for f in root.glob(pattern))
    readme = root / card.CARD_FILE
    return folders + [readme] if folders and card.is_mmembed_card(readme) else folders


def _refusal(output_dir: Path, earlier: list[Path]) -> str:
    """The one-line refusal to start over ``earlier`` (of :func:`earlier_run`): resume (when a checkpoint of this
    folder can be resumed), a new folder, or ``--overwrite_output_dir``, saying what that deletes."""
    folders = [p for p in earlier if p.is_dir()]
    names = ", ".join(str(f.relative_to(output_dir)) for f in folders[:4]) + (", ..." if len(folders) > 4 else "")
    only_checkpoints = all(_CHECKPOINT.match(f.name) for f in folders)
    what = "checkpoints of an earlier run" if only_checkpoints else "the output of an earlier run"
    deleted = "those checkpoints" if only_checkpoints else "those folders"
    deleted += f" and its model card {card.CARD_FILE}" if len(folders) < len(earlier) else ""
    overwrite = f"a new --output_dir or with --{OVERWRITE} true (which deletes {deleted})."
    if latest_checkpoint(output_dir) is not None:
        return (f"{output_dir} holds {what} ({names}): resume it with --resume_from_checkpoint true, or start over "
                f"with {overwrite}")
    return (f"{output_dir} holds {what} ({names}), with no checkpoint a run can resume from: start over with "
            f"{overwrite}")


def resolve_resume(output_dir: str | Path, resume: str | bool | None) -> str | None:
    """The checkpoint folder a run resumes from: ``true`` (or ``True``) is the latest complete checkpoint of
    ``output_dir``, as in transformers; ``false`` / ``None`` / ``""``: none. Raises :class:`RunStateError` when
    there is no checkpoint to take, or the named folder is not a complete checkpoint."""
    if isinstance(resume, str) and resume.lower() in ("true", "false") and not Path(resume).exists():
        resume = resume.lower() == "true"
    if not resume:
        return None
    if resume is True:
        latest = latest_checkpoint(output_dir)
        if latest is None:
            raise RunStateError(f"--resume_from_checkpoint true: {output_dir} holds no complete checkpoint "
                                f"(checkpoint-<step> folder with {STATE_FILE}); start without "
                                f"--resume_from_checkpoint, or name a checkpoint folder.")
        logger.warning("resuming from the latest checkpoint of %s: %s", output_dir, latest)
        return latest
    if not (Path(resume) / STATE_FILE).is_file():
        what = f"is not a complete checkpoint (no {STATE_FILE})" if Path(resume).is_dir() else "does not exist"
        raise RunStateError(f"--resume_from_checkpoint {resume}: the folder {what}; name a checkpoint-<step> folder "
                            f"of an earlier run, or true for the latest one in --output_dir.")
    return str(resume)


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``output_dir`` and in its subfolders (a staged recipe's stages), by
    step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [f for pattern in ("checkpoint-*", "*/checkpoint-*") for f in root.glob(pattern)
             if f.is_dir() and _CHECKPOINT.match(f.name)]
    return sorted(found, key=lambda f: (str(f.parent), int(_CHECKPOINT.match(f.name).group(1))))


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The ``checkpoint-<step>`` folder of ``output_dir`` with the highest step among the complete ones (holding
    ``trainer_state.json``, written last); ``None`` when there is none."""
    root = Path(output_dir)
    complete = [f for f in checkpoint_folders(root) if f.parent == root and (f / STATE_FILE).is_file()]
    return str(complete[-1]) if complete else None


def run_recipe(main: Callable[..., Any], argv: Sequence[str] | None = None) -> Any:
    """Call ``main()`` (``main(argv)`` when ``argv`` is given), then write mmembed's model card of the run
    (:func:`~mmembed.train.card.write_recipe_card`: ``README.md`` in ``output_dir`` and its ``final`` folder).

    A user error (:class:`~mmembed.errors.MMEmbedError`) is one line on stderr, ``error: <message>``, and exit code 2,
    no traceback. Only the main process (``RANK`` 0, or no launcher) prints it; the others exit with 2 silently, so
    an error every process meets (a bad config value) is printed once under ``accelerate launch``. Add ``-q`` to
    ``accelerate launch`` so that the launcher does not follow it with its own traceback (it then exits with 1)."""
    card.forget_args()
    try:
        result = main() if argv is None else main(list(argv))
    except MMEmbedError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    if os.environ.get("RANK", "0") == "0":
        try:
            card.write_recipe_card(Path(inspect.getfile(main)).stem, result)
        except OSError as exc:  # the model is saved: a card that cannot be written is worth a warning, not a failure
            logger.warning("model card not written: %s", exc)
    return result
