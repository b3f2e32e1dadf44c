"""Scenes of the synthetic benchmark: the vocabulary (shapes, colours, sizes, grid positions, words), the scene model,
random scenes and single edits, and the captions that describe a scene completely (``parse_caption`` inverts
``caption``)."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COLORS", "COLOR_NAMES", "COUNT_WORDS", "MAX_OBJECTS", "PLURALS", "POSITIONS", "ROWS", "ROW_PHRASES", "SHAPES",
    "SIZES", "WORDS", "Scene", "SceneObject", "caption", "distinct_edits", "edit", "parse_caption", "random_scene",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
                           "cross": "crosses", "diamond": "diamonds"}
COLORS: dict[str, tuple[int, int, int]] = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220),
                                           "yellow": (240, 205, 0), "purple": (140, 50, 180),
                                           "orange": (250, 135, 10)}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                              "bottom left", "bottom", "bottom right")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
ROW_PHRASES: tuple[str, ...] = ("at the top", "in the middle", "at the bottom")
WORDS: tuple[str, ...] = ("apple", "bread", "cloud", "dance", "eagle", "house", "lemon", "music", "piano", "river",
                          "tiger", "zebra")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_OBJECTS = 5  # edits never grow a scene beyond this


# --------------------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SceneObject:
    """One shape in a grid cell (``cell`` 0..8, row-major: 0 = top left, 8 = bottom right)."""

    shape: str
    color: str
    size: str
    cell: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.size not in SIZES or not 0 <= self.cell < 9:
            raise ValueError(f"invalid object {self!r}")

    @property
    def name(self) -> str:
        """``"red circle"``."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects (one per cell, kept sorted by cell) and an optional word written across row ``word_row`` (0..2);
    the word's row holds no object."""

    objects: tuple[SceneObject, ...]
    word: str | None = None
    word_row: int | None = None

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects, key=lambda o: o.cell))
        object.__setattr__(self, "objects", objects)
        cells = [o.cell for o in objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        if (self.word is None) != (self.word_row is None):
            raise ValueError("word and word_row go together")
        if self.word is not None:
            if self.word not in WORDS or self.word_row not in (0, 1, 2):
                raise ValueError(f"invalid word {self.word!r} / row {self.word_row!r}")
            if any(c // 3 == self.word_row for c in cells):
                raise ValueError("an object lies in the word's row")

    def free_cells(self) -> list[int]:
        """Cells without an object and outside the word's row."""
        used = {o.cell for o in self.objects}
        return [c for c in range(9) if c not in used and c // 3 != self.word_row]

    def free_rows(self) -> list[int]:
        """Rows without any object (where a word could go)."""
        used = {o.cell // 3 for o in self.objects}
        return [r for r in range(3) if r not in used]

    @property
    def key(self) -> str:
        """A canonical identity (the caption, which determines the scene)."""
        return caption(self)


def pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    """One item of ``seq``, drawn uniformly."""
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq: Sequence[Any], n: int) -> list[Any]:
    """``n`` distinct items of ``seq`` in random order."""
    return [seq[int(i)] for i in rng.permutation(len(seq))[:n]]


def cells_outside(word_row: int | None, exclude: Sequence[int] = ()) -> list[int]:
    """The grid cells outside the word's row and not in ``exclude``."""
    return [c for c in range(9) if c // 3 != word_row and c not in exclude]


def maybe_word(rng: np.random.Generator, prob: float, rows: Sequence[int] = (0, 1, 2)
               ) -> tuple[str | None, int | None]:
    """A random word and row (one of ``rows``) with probability ``prob``, else ``(None, None)``."""
    if not rows or rng.random() >= prob:
        return None, None
    return pick(rng, WORDS), int(pick(rng, rows))


def random_scene(rng: np.random.Generator, n_objects: int | None = None, word_prob: float = 0.5,
                 unique: bool = False) -> Scene:
    """A random scene of ``n_objects`` (default 1-4) objects; some repeat an earlier object's shape, colour and size
    (a group: "two small red circles") unless ``unique`` (every colour + shape at most once)."""
    n = int(rng.integers(1, 5)) if n_objects is None else n_objects
    word, row = maybe_word(rng, word_prob)
    free = cells_outside(row)
    if not 1 <= n <= len(free):
        raise ValueError(f"cannot place {n} objects in {len(free)} free cells")
    cells = sample(rng, free, n)
    objects: list[SceneObject] = []
    for cell in cells:
        if objects and not unique and rng.random() < 0.3:
            o = pick(rng, objects)
            objects.append(SceneObject(o.shape, o.color, o.size, cell))
            continue
        used = {(o.color, o.shape) for o in objects}
        combos = [(c, s) for c in COLOR_NAMES for s in SHAPES if not unique or (c, s) not in used]
        color, shape = pick(rng, combos)
        objects.append(SceneObject(shape, color, pick(rng, SIZES), cell))
    return Scene(tuple(objects), word, row)


def edit(scene: Scene, rng: np.random.Generator) -> tuple[Scene, str]:
    """One random change of one attribute (colour, shape, size, position of an object; add / remove an object; the
    word) and its instruction ("make the red circle blue"). Only objects whose colour + shape is unique in the
    scene are referred to, so the instruction is unambiguous."""
    combos = Counter((o.color, o.shape) for o in scene.objects)
    referable = [o for o in scene.objects if combos[(o.color, o.shape)] == 1]
    free = scene.free_cells()
    kinds = []
    if referable:
        kinds += ["recolor", "reshape", "resize"] + (["move"] if free else [])
        kinds += ["remove"] if len(scene.objects) > 1 else []
    kinds += ["add"] if free and len(scene.objects) < MAX_OBJECTS else []
    if scene.word is not None:
        kinds += ["reword", "erase"] if scene.objects else ["reword"]
    elif scene.free_rows():
        kinds += ["write"]
    if not kinds:
        raise ValueError(f"no possible edit of {caption(scene)!r}")

    def others(o: SceneObject) -> tuple[SceneObject, ...]:
        return tuple(x for x in scene.objects if x != o)

    for _ in range(100):
        kind = pick(rng, kinds)
        if kind in ("recolor", "reshape", "resize", "move", "remove"):
            o = pick(rng, referable)
            ref = f"the {o.name}"
            if kind == "recolor":
                options = [c for c in COLOR_NAMES if c != o.color and (c, o.shape) not in combos]
                if options:
                    c = pick(rng, options)
                    return (Scene(others(o) + (dataclasses.replace(o, color=c),), scene.word, scene.word_row),
                            f"make {ref} {c}")
            elif kind == "reshape":
                options = [s for s in SHAPES if s != o.shape and (o.color, s) not in combos]
                if options:
                    s = pick(rng, options)
                    return (Scene(others(o) + (dataclasses.replace(o, shape=s),), scene.word, scene.word_row),
                            f"turn {ref} into a {s}")
            elif kind == "resize":
                size = "large" if o.size == "small" else "small"
                return (Scene(others(o) + (dataclasses.replace(o, size=size),), scene.word, scene.word_row),
                        f"make {ref} {'larger' if size == 'large' else 'smaller'}")
            elif kind == "move":
                cell = int(pick(rng, free))
                return (Scene(others(o) + (dataclasses.replace(o, cell=cell),), scene.word, scene.word_row),
                        f"move {ref} to the {POSITIONS[cell]}")
            else:
                return Scene(others(o), scene.word, scene.word_row), f"remove {ref}"
        elif kind == "add":
            o = SceneObject(pick(rng, SHAPES), pick(rng, COLOR_NAMES), pick(rng, SIZES), int(pick(rng, free)))
            return (Scene(scene.objects + (o,), scene.word, scene.word_row),
                    f"add a {o.size} {o.name} at the {POSITIONS[o.cell]}")
        elif kind == "reword":
            word = pick(rng, [w for w in WORDS if w != scene.word])
            return Scene(scene.objects, word, scene.word_row), f"replace the word '{scene.word}' with '{word}'"
        elif kind == "erase":
            return Scene(scene.objects), f"erase the word '{scene.word}'"
        else:
            word, row = pick(rng, WORDS), int(pick(rng, scene.free_rows()))
            return Scene(scene.objects, word, row), f"write the word '{word}' {ROW_PHRASES[row]}"
    raise RuntimeError(f"no edit found for {caption(scene)!r}")  # pragma: no cover


def distinct_edits(rng: np.random.Generator, base: Scene, n: int) -> list[tuple[Scene, str]]:
    """``n`` different single edits of ``base`` and their instructions, in random order. Drawing without
    replacement favours likely edits in the first draws, so the list is shuffled: given the set, every position is
    equally likely to hold any of its edits (the caller's "first = gold" is then a uniform choice)."""
    seen, edits = set(), []
    for _ in range(100 * n):
        scene, text = edit(base, rng)
        if scene.key not in seen:
            seen.add(scene.key)
            edits.append((scene, text))
            if len(edits) == n:
                return [edits[int(i)] for i in rng.permutation(n)]
    raise RuntimeError(f"could not find {n} distinct edits of {caption(base)!r}")


# -------------------------------------------------------------------------------------------------- captions


def join_words(items: Sequence[str]) -> str:
    """``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene) -> str:
    """A complete description, e.g. "two small red circles at the top left and the center, a large blue square at
    the bottom right; the word 'apple' is written in the middle" (identical objects are grouped)."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for o in scene.objects:
        groups.setdefault((o.size, o.color, o.shape), []).append(o.cell)
    parts = []
    for (size, color, shape), cells in groups.items():
        count, noun = ("a", shape) if len(cells) == 1 else (COUNT_WORDS[len(cells)], PLURALS[shape])
        parts.append(f"{count} {size} {color} {noun} at {join_words(['the ' + POSITIONS[c] for c in cells])}")
    text = ", ".join(parts)
    if scene.word is not None:
        word = f"the word '{scene.word}' is written {ROW_PHRASES[scene.word_row]}"
        text = f"{text}; {word}" if text else word
    return text or "an empty picture"


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_POS_RE = _alternation(POSITIONS)
_NOUNS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_GROUP_RE = re.compile(
    rf"(a|{_alternation(COUNT_WORDS[2:])}) ({_alternation(SIZES)}) ({_alternation(COLOR_NAMES)}) "
    rf"({_alternation(list(_NOUNS))}) at (the (?:{_POS_RE})(?:(?:, | and )the (?:{_POS_RE}))*)")
_WORD_RE = re.compile(rf"the word '([a-z]+)' is written ({_alternation(ROW_PHRASES)})")


def parse_caption(text: str) -> Scene:
    """The scene a ``caption`` describes (raises ``ValueError`` for text that is not such a caption)."""
    objects_part, word, row = text, None, None
    if "the word '" in text:
        objects_part, _, word_part = text.rpartition("; ") if "; " in text else ("", "", text)
        m = _WORD_RE.fullmatch(word_part)
        if m is None:
            raise ValueError(f"not a synthetic caption: {text!r}")
        word, row = m.group(1), ROW_PHRASES.index(m.group(2))
    objects = []
    if objects_part not in ("", "an empty picture"):
        for m in _GROUP_RE.finditer(objects_part):
            cells = [POSITIONS.index(p) for p in re.findall(_POS_RE, m.group(5))]
            shape = _NOUNS[m.group(4)]
            objects += [SceneObject(shape, m.group(3), m.group(2), c) for c in cells]
    try:
        scene = Scene(tuple(objects), word, row)
    except ValueError as exc:
        raise ValueError(f"not a synthetic caption: {text!r} ({exc})") from exc
    if caption(scene) != text:
        raise ValueError(f"not a synthetic caption: {text!r}")
    return scene
