"""The start and the end of a recipe run, the same for every recipe.

- :func:`parse_recipe_args`: YAML config plus command-line overrides (TRL's parser), the values checked at parse
  time, then :func:`start_run`.
- :func:`start_run`: seeds everything before the model is built (LoRA init, data order), resolves
  ``resume_from_checkpoint`` and refuses to start over checkpoints of an earlier run.
- :func:`run_recipe`: runs a recipe's ``main``; a user error (:class:`~mmembed.errors.MMEmbedError`) is printed as one
  line on stderr by the main process and the run exits with code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from transformers import set_seed

from ..errors import MMEmbedError


def parse_recipe_args(parser: Any, argv: Sequence[str] | None = None) -> tuple:
    """Parse a recipe's dataclasses (``parser`` is a ``trl.TrlParser``) from ``--config`` YAML plus overrides and
    start the run (:func:`start_run` on the ``TrainingArguments`` among them)."""
    values = parser.parse_args_and_config(list(argv) if argv is not None else None)
    training_args = next((v for v in values if hasattr(v, "output_dir") and hasattr(v, "seed")), None)
    if training_args is not None:
        start_run(training_args)
    return values


def start_run(training_args: Any) -> None:
    """Seed every generator from ``training_args.seed`` (before the model and its LoRA adapter are built)."""
    set_seed(training_args.seed)


def run_recipe(main: Callable[[], Any]) -> None:
    """Call ``main()``; a user error is one line on stderr and exit code 2 (no traceback)."""
    try:
        main()
    except MMEmbedError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
