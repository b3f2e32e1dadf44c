"""Lazy submodules: after ``import mmembed``, ``mmembed.eval.sts`` or ``mmembed.rationale.RationaleConfig`` work
without importing every submodule (and its heavy dependencies) up front (PEP 562 module ``__getattr__``)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def submodule(package: str, name: str) -> ModuleType:
    """Import ``package.name`` on first attribute access; AttributeError when there is no such submodule."""
    if not name.startswith("_"):
        full = f"{package}.{name}"
        try:
            found = importlib.util.find_spec(full) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            return importlib.import_module(full)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
