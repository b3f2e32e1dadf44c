"""Exceptions raised by mmembed. Each message names the bad input and says how to fix it."""

from __future__ import annotations


class MMEmbedError(Exception):
    """Base class of every error mmembed raises on purpose."""


class InputError(MMEmbedError, ValueError):
    """An input given to ``encode`` cannot be embedded (wrong type, empty, unreadable image...)."""


class ModelNotFoundError(MMEmbedError, FileNotFoundError):
    """A model or adapter path / hub id could not be found."""


class AdapterMismatchError(MMEmbedError, ValueError):
    """A LoRA adapter does not fit the base model it was loaded onto."""
