"""The one recipe runner: parse -> :meth:`Method.run` -> print the result -> tear down, for every method.

A recipe is then a few lines (``recipes/lco.py``)::

    def main(argv: list[str] | None = None) -> dict:
        return run_method(LCO(), argv)

    if __name__ == "__main__":
        run_recipe(main)  # a user error: one line, exit 2; a finished run: its model card
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from trl import TrlParser

from .. import distributed
from ..run import parse_recipe_args, run_recipe
from . import get_method
from .base import Method, RecipeArgs

__all__ = ["parse_method_args", "run_method", "run_recipe"]


def parse_method_args(method: Method, argv: Sequence[str] | None = None,
                      default_config: str | Path | None = None) -> RecipeArgs:
    """The method's dataclasses from ``--config`` YAML plus command-line overrides (TRL's parser, checked and
    seeded by :func:`~mmembed.train.run.parse_recipe_args`); ``default_config`` when the command line names none."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if default_config is not None and "--config" not in argv:
        argv = ["--config", str(default_config), *argv]
    parser = TrlParser(tuple(method.arguments.values()))
    parser.set_defaults(**method.parser_defaults())
    values = parse_recipe_args(parser, argv)
    return RecipeArgs(**dict(zip(method.arguments, values, strict=True)))


def run_method(method: Method | str, argv: Sequence[str] | None = None,
               default_config: str | Path | None = None) -> dict:
    """Run ``method`` (an object or a registered name) as its recipe does: parse (``default_config`` when the command
    line names no ``--config``), run, print the result line, tear down the process group. Returns the result."""
    method = get_method(method) if isinstance(method, str) else method
    args = parse_method_args(method, argv, default_config)
    result = method.run(args)
    if method.print_everywhere or args.training.process_index == 0:
        print(method.format_result(result), flush=True)
    distributed.teardown()
    return result

