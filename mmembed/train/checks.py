"""Parse-time checks of recipe arguments: one :class:`~mmembed.errors.ConfigError` line naming the key, the value and
the rule (``lora_r must be an integer >= 1, got 4.5``).

Each argument dataclass calls :func:`check_fields` from its ``__post_init__``; ``TrlParser`` builds the dataclasses
while parsing, so a bad value stops the run before any model is loaded. YAML values reach the dataclasses as YAML
typed them (``TrlParser`` passes them to ``argparse.set_defaults``, which converts only strings), so ``lora_r: 4.5``
arrives as the float 4.5 and ``lora: 1`` as the integer 1: the checks test the value that arrives, not the
annotation. A scalar given for a list field (``lora_target_modules: q_proj``) becomes a one-element list, as on the
command line.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, is_int


@dataclass(frozen=True)
class Rule:
    """What a value must be: ``test(value)`` and the words that say it (``an integer >= 1``)."""

    test: Callable[[Any], bool]
    text: str
    is_list: bool = False

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> tuple[Callable, str]:
    """The test of the bounds and their words: ``>= 1``, ``> 0``, ``in [0, 1)``."""
    def test(v: Any) -> bool:
        return ((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
                and (le is None or v <= le))

    low = (gt, "(", ">") if gt is not None else (ge, "[", ">=") if ge is not None else None
    high = (lt, ")", "<") if lt is not None else (le, "]", "<=") if le is not None else None
    if low and high:
        return test, f" in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
    bound = low or high
    return test, f" {bound[2]} {bound[0]:g}" if bound else ""


def _is_number(value: Any) -> bool:
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def integer(gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None) -> Rule:
    """An integer (not a bool, not a float such as 4.5 or 4.0) within the bounds."""
    test, words = _bounds(gt, ge, lt, le)
    return Rule(lambda v: is_int(v) and test(v), f"an integer{words}")


def number(gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> Rule:
    """A finite int or float within the bounds."""
    test, words = _bounds(gt, ge, lt, le)
    return Rule(lambda v: _is_number(v) and test(v), f"a number{words}")


def one_of(*choices: str, also: str = "", accept: Callable[[str], bool] | None = None) -> Rule:
    """One of the strings ``choices`` (or one ``accept`` lets through, described by ``also``)."""
    words = ", ".join(choices) + (f" or {also}" if also else "")
    return Rule(lambda v: isinstance(v, str) and (v in choices or (accept is not None and accept(v))),
                f"one of {words}")


def list_of(rule: Rule) -> Rule:
    """A list whose every element passes ``rule``."""
    element = rule.text.removeprefix("an ").removeprefix("a ").removeprefix("one of ")
    plural = {"integer": "integers", "number": "numbers", "string": "strings"}
    head, _, tail = element.partition(" ")
    words = f"{plural[head]} {tail}".rstrip() if head in plural else f"values each one of {element}"
    return Rule(lambda v: isinstance(v, list) and all(rule(x) for x in v), f"a list of {words}", is_list=True)


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
STRING = Rule(lambda v: isinstance(v, str), "a string")
INT = integer()
NUMBER = number()
POSITIVE_INT = integer(ge=1)
POSITIVE = number(gt=0)
NON_NEGATIVE = number(ge=0)
FRACTION = number(ge=0, le=1)
COSINE = number(ge=-1, le=1)

#: the rule an unlisted field gets from its annotation (``int | None`` -> INT, null allowed)
_BY_ANNOTATION = {"int": INT, "float": NUMBER, "bool": BOOL, "str": STRING, "list[int]": list_of(INT),
                  "list[float]": list_of(NUMBER), "list[str]": list_of(STRING)}


def _annotation(field_type: Any) -> tuple[str, bool]:
    """(base type, None allowed) of a dataclass field's annotation: a string such as ``"list[int] | None"`` (modules
    with postponed annotations) or a type such as ``Optional[int]``."""
    if isinstance(field_type, str):
        parts = [p.strip() for p in field_type.split("|")]
        return " | ".join(p for p in parts if p != "None"), "None" in parts
    args = [a for a in typing.get_args(field_type) if a is not type(None)]
    nullable = type(None) in typing.get_args(field_type)
    base = args[0] if nullable and len(args) == 1 else field_type
    return getattr(base, "__name__", str(base)), nullable


def _declared_type(cls: type, name: str) -> Any:
    """The annotation as written in the class body (``HfArgumentParser`` rewrites ``Field.type``, dropping
    ``None`` from ``X | None``)."""
    for klass in cls.__mro__:
        annotations = vars(klass).get("__annotations__", {})
        if name in annotations:
            return annotations[name]
    return None


def fail(name: str, value: Any, text: str) -> ConfigError:
    """The error for ``name``: ``lora_r must be an integer >= 1, got 4.5``."""
    return ConfigError(f"{name} must be {text}, got {value!r}")


def check_fields(obj: Any, rules: dict[str, Rule] | None = None, names: Sequence[str] | None = None) -> None:
    """Check ``obj``'s fields: those in ``rules`` by their rule, the other fields its own class declares (or
    ``names``) by their annotation; None passes where the annotation allows it. Raises :class:`ConfigError` on the
    first bad value. A scalar for a list field is replaced by a one-element list."""
    rules = dict(rules or {})
    fields = getattr(obj, "__dataclass_fields__", {})
    own = names if names is not None else [n for n in vars(type(obj)).get("__annotations__", {}) if n in fields]
    for name in dict.fromkeys([*own, *rules]):
        base, nullable = _annotation(_declared_type(type(obj), name)) if name in fields else ("", True)
        rule = rules.get(name) or _BY_ANNOTATION.get(base)
        if rule is None:
            continue
        value = getattr(obj, name)
        if value is None and nullable:
            continue
        if rule.is_list and value is not None and not isinstance(value, list):
            value = [value]
            setattr(obj, name, value)
        if not rule(value):
            raise fail(name, value, rule.text + (" or null" if nullable else ""))
        if base == "float" and is_int(value):
            setattr(obj, name, float(value))
