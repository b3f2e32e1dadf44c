"""Exceptions raised by mmembed. Each message names the bad input and says how to fix it.

Every user mistake (a bad input, file, config value or output path) raises a subclass of :class:`MMEmbedError`;
the command line prints such an error as one line on stderr and exits with code 2 (``--debug`` shows the
traceback), and recipes print it once. :func:`one_line` puts a message (or a library's exception) on one line;
:func:`is_int` is the integer test of the config and model-folder checks.
"""

from __future__ import annotations


class MMEmbedError(Exception):
    """Base class of every error mmembed raises on purpose."""


class InputError(MMEmbedError, ValueError):
    """An input given to ``encode`` cannot be embedded (wrong type, empty, unreadable image...)."""


class ModelNotFoundError(MMEmbedError, FileNotFoundError):
    """A model or adapter path / hub id could not be found."""


class ModelFolderError(MMEmbedError, ValueError):
    """A model folder is incomplete or corrupt (a config file that does not parse, a missing key, unreadable
    weights, missing tokenizer files); the message names the file and the key."""


class AdapterMismatchError(MMEmbedError, ValueError):
    """A LoRA adapter does not fit the base model it was loaded onto."""


class DataError(MMEmbedError, ValueError):
    """A training or evaluation record that cannot be used; the message names its file and line."""


class ConfigError(MMEmbedError, ValueError):
    """A configuration value of the wrong type or out of range (checked when the config is parsed)."""


class OutputPathError(MMEmbedError, ValueError):
    """An output path that cannot be written (wrong suffix, missing or unwritable folder, a folder where a file is
    expected); checked before any work starts."""


class RunStateError(MMEmbedError, RuntimeError):
    """A training run would overwrite or lose earlier work (e.g. an output folder that holds checkpoints)."""


def one_line(message: str | BaseException, limit: int | None = None) -> str:
    """``message`` (or an exception's message) on one line: its non-blank lines stripped and joined by spaces,
    shortened to ``limit`` characters (ending in " ...") when given; an exception without a message gives its class
    name."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    if limit is not None and len(text) > limit:
        text = text[:limit] + " ..."
    return text or (type(message).__name__ if isinstance(message, BaseException) else "")


def is_int(value: object, minimum: int | None = None) -> bool:
    """Whether ``value`` is an integer (not a bool, not a float such as 4.0), at least ``minimum`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def positive_int(text: str) -> int:
    """An ``argparse`` type (the command lines of :mod:`mmembed.cli` and its subcommands): a whole number >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value
