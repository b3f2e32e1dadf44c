"""The errors of the mteb adapter: an unknown task name, registry data that cannot be loaded, a malformed local
task file."""

from __future__ import annotations

from ...errors import DataError, MMEmbedError


class UnknownTaskError(MMEmbedError, LookupError):
    """A task name is not in mteb's registry (and is not an existing path)."""


class TaskDataUnavailableError(MMEmbedError, RuntimeError):
    """The data of a registry task could not be loaded (typically: not in the local cache, and offline)."""


class TaskFileError(DataError):
    """A local task file is malformed; the message names ``file:line``."""
