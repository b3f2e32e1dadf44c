"""A synthetic multimodal benchmark and training set, deterministic from a seed: the offline stand-in for MMEB.

Scenes are square images of coloured shapes on a 3x3 grid (light grey background with mild seeded noise), optionally
with a word written in one row; captions describe them completely (``parse_caption`` inverts ``caption``). Every
task's answer is visible in the image and absent from the query text, and the gold labels of each task are balanced
(any text-only guess is at chance). ``generate`` writes the same scenes in four formats that share one image folder:

- ``mmeb_eval/<Task>.jsonl`` + ``tasks.yaml`` (VLM2Vec ``TIGER-Lab/MMEB-eval`` rows, gold candidate first);
- ``mmeb_train/<Task>.jsonl`` for the in-distribution tasks (``TIGER-Lab/MMEB-train`` rows plus MuCo's generated
  captions ``qry_sentence`` / ``pos_sentence``, here the exact scene captions; ``read_mmeb_train``);
- ``muco/*.jsonl`` (one image, up to ``k_turns`` query / positive pairs about it; one file per question-type order:
  train on the folder, a mixture that takes each batch from one file);
- ``mbeir/`` (UniIR ``TIGER-Lab/M-BEIR`` layout: queries, local and global candidate pools, qrels, instructions).

All image paths are relative to the output root (also for M-BEIR: its image root is the output root, not ``mbeir/``).
Only numpy and Pillow are used (PIL's built-in bitmap font draws the words). See ``data_cards/synthetic.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import OutputPathError
from ..files import write_text

__all__ = [
    "COLORS", "POSITIONS", "SHAPES", "SIZES", "TASKS", "WORDS", "Scene", "SceneObject", "SyntheticConfig",
    "TaskInfo", "caption", "cell_box", "edit", "generate", "parse_caption", "random_scene", "render",
]

GENERATOR = "mmembed.data.synthetic"
VERSION = "1.5"  # 1.1: mmeb_train rows carry qry_sentence / pos_sentence; 1.2: MuCo pairs as the IND tasks;
# 1.3: a quarter of the MuCo lines are one-object packs phrased as Shape-Cls / Color-Cls (+ Word-VQA);
# 1.4: MuCo packs ask fixed question types in a fixed order (MUCO_QUESTION_ORDER), every training scene has a word;
# 1.5: one MuCo file per question-type order, the orders rotated so that every type also comes first
IMAGE_TOKEN = "<|image_1|>"

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
BACKGROUND: tuple[int, int, int] = (225, 225, 225)
TEXT_COLOR: tuple[int, int, int] = (20, 20, 20)
MAX_OBJECTS = 5  # edits never grow a scene beyond this
_RADIUS = {"small": 0.24, "large": 0.42}  # fraction of a cell's side


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


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _sample(rng: np.random.Generator, seq: Sequence[Any], n: int) -> list[Any]:
    return [seq[int(i)] for i in rng.permutation(len(seq))[:n]]


def _free(word_row: int | None, exclude: Sequence[int] = ()) -> list[int]:
    return [c for c in range(9) if c // 3 != word_row and c not in exclude]


def _maybe_word(rng: np.random.Generator, prob: float, rows: Sequence[int] = (0, 1, 2)
                ) -> tuple[str | None, int | None]:
    if not rows or rng.random() >= prob:
        return None, None
    return _pick(rng, WORDS), int(_pick(rng, rows))


def random_scene(rng: np.random.Generator, n_objects: int | None = None, word_prob: float = 0.5,
                 unique: bool = False) -> Scene:
    """A random scene of ``n_objects`` (default 1-4) objects; some repeat an earlier object's shape, colour and size
    (a group: "two small red circles") unless ``unique`` (every colour + shape at most once)."""
    n = int(rng.integers(1, 5)) if n_objects is None else n_objects
    word, row = _maybe_word(rng, word_prob)
    free = _free(row)
    if not 1 <= n <= len(free):
        raise ValueError(f"cannot place {n} objects in {len(free)} free cells")
    cells = _sample(rng, free, n)
    objects: list[SceneObject] = []
    for cell in cells:
        if objects and not unique and rng.random() < 0.3:
            o = _pick(rng, objects)
            objects.append(SceneObject(o.shape, o.color, o.size, cell))
            continue
        used = {(o.color, o.shape) for o in objects}
        combos = [(c, s) for c in COLOR_NAMES for s in SHAPES if not unique or (c, s) not in used]
        color, shape = _pick(rng, combos)
        objects.append(SceneObject(shape, color, _pick(rng, SIZES), cell))
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
        kind = _pick(rng, kinds)
        if kind in ("recolor", "reshape", "resize", "move", "remove"):
            o = _pick(rng, referable)
            ref = f"the {o.name}"
            if kind == "recolor":
                options = [c for c in COLOR_NAMES if c != o.color and (c, o.shape) not in combos]
                if options:
                    c = _pick(rng, options)
                    return (Scene(others(o) + (dataclasses.replace(o, color=c),), scene.word, scene.word_row),
                            f"make {ref} {c}")
            elif kind == "reshape":
                options = [s for s in SHAPES if s != o.shape and (o.color, s) not in combos]
                if options:
                    s = _pick(rng, options)
                    return (Scene(others(o) + (dataclasses.replace(o, shape=s),), scene.word, scene.word_row),
                            f"turn {ref} into a {s}")
            elif kind == "resize":
                size = "large" if o.size == "small" else "small"
                return (Scene(others(o) + (dataclasses.replace(o, size=size),), scene.word, scene.word_row),
                        f"make {ref} {'larger' if size == 'large' else 'smaller'}")
            elif kind == "move":
                cell = int(_pick(rng, free))
                return (Scene(others(o) + (dataclasses.replace(o, cell=cell),), scene.word, scene.word_row),
                        f"move {ref} to the {POSITIONS[cell]}")
            else:
                return Scene(others(o), scene.word, scene.word_row), f"remove {ref}"
        elif kind == "add":
            o = SceneObject(_pick(rng, SHAPES), _pick(rng, COLOR_NAMES), _pick(rng, SIZES), int(_pick(rng, free)))
            return (Scene(scene.objects + (o,), scene.word, scene.word_row),
                    f"add a {o.size} {o.name} at the {POSITIONS[o.cell]}")
        elif kind == "reword":
            word = _pick(rng, [w for w in WORDS if w != scene.word])
            return Scene(scene.objects, word, scene.word_row), f"replace the word '{scene.word}' with '{word}'"
        elif kind == "erase":
            return Scene(scene.objects), f"erase the word '{scene.word}'"
        else:
            word, row = _pick(rng, WORDS), int(_pick(rng, scene.free_rows()))
            return Scene(scene.objects, word, row), f"write the word '{word}' {ROW_PHRASES[row]}"
    raise RuntimeError(f"no edit found for {caption(scene)!r}")  # pragma: no cover


def _distinct_edits(rng: np.random.Generator, base: Scene, n: int) -> list[tuple[Scene, str]]:
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


def _join(items: Sequence[str]) -> str:
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
        parts.append(f"{count} {size} {color} {noun} at {_join(['the ' + POSITIONS[c] for c in cells])}")
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


# ------------------------------------------------------------------------------------------------- rendering


def cell_box(cell: int, size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)`` of a grid cell (the grounding crops)."""
    row, col = divmod(cell, 3)
    return round(col * size / 3), round(row * size / 3), round((col + 1) * size / 3), round((row + 1) * size / 3)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, o: SceneObject, size: int) -> None:
    x0, y0, x1, y1 = cell_box(o.cell, size)
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    r = _RADIUS[o.size] * size / 3
    color = COLORS[o.color]
    if o.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif o.shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=color)
    elif o.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)], fill=color)
    elif o.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=color)
    elif o.shape == "star":
        draw.polygon(_star(cx, cy, r), fill=color)
    else:  # cross
        w = 0.33 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)


_FONT: Any = None
_WORD_MASKS: dict[tuple[str, int], Image.Image] = {}


def _font() -> Any:
    """PIL's built-in bitmap font (no FreeType: the same pixels on every machine)."""
    global _FONT
    if _FONT is None:
        loader = getattr(ImageFont, "load_default_imagefont", None)
        _FONT = loader() if loader is not None else ImageFont.load_default()
    return _FONT


def _word_mask(word: str, size: int) -> Image.Image:
    """The word drawn small with the bitmap font, then enlarged (nearest) to be readable: at most 90% of the image
    width and 80% of a row's height (the same scale for every word of ``WORDS``)."""
    key = (word, size)
    if key not in _WORD_MASKS:
        font = _font()
        boxes = [font.getbbox(w) for w in WORDS]
        width, height = max(b[2] - b[0] for b in boxes), max(b[3] - b[1] for b in boxes)
        scale = max(1, min(int(0.9 * size / width), int(0.8 * size / 3 / height)))
        left, top, right, bottom = font.getbbox(word)
        mask = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(mask).text((-left, -top), word, fill=255, font=font)
        _WORD_MASKS[key] = mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)
    return _WORD_MASKS[key]


def render(scene: Scene, size: int = 128, *, rng: np.random.Generator | None = None, noise: int = 6) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` px. With ``rng``, mild background noise is added (uniform
    integers in [-noise, noise], in blocks of ``size // 32`` px, the same on all three channels); without, the
    rendering is clean (what an analysis-by-synthesis reader compares against)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        _draw_object(draw, o, size)
    if scene.word is not None:
        mask = _word_mask(scene.word, size)
        _, y0, _, y1 = cell_box(3 * scene.word_row, size)
        x, y = (size - mask.width) // 2, (y0 + y1 - mask.height) // 2
        image.paste(TEXT_COLOR, (x, y, x + mask.width, y + mask.height), mask)
    if rng is not None and noise > 0:
        block = max(1, size // 32)
        cells = -(-size // block)
        grain = rng.integers(-noise, noise + 1, size=(cells, cells, 1), dtype=np.int16)
        grain = grain.repeat(block, axis=0).repeat(block, axis=1)[:size, :size]
        pixels = np.asarray(image, dtype=np.int16) + grain
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image


# --------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SyntheticConfig:
    """What ``generate`` writes. Counts are per task unless said otherwise."""

    seed: int = 0
    image_size: int = 128
    n_eval_queries: int = 50  # MMEB-eval queries per task
    n_candidates: int = 16  # retrieval pool per query; cap for VQA answer sets (classification uses all labels)
    n_train_per_task: int = 200  # MMEB-train rows per in-distribution task
    n_muco_images: int = 200  # MuCo lines (one image each)
    k_turns: int = 4  # MuCo pairs per image
    n_mbeir_queries: int = 50  # M-BEIR queries per task
    n_mbeir_negatives: int = 3  # hard negatives per M-BEIR query (also put in the candidate pools)
    noise: int = 6  # background noise amplitude (grey levels)

    def __post_init__(self) -> None:
        checks = {"seed >= 0": self.seed >= 0, "image_size >= 48": self.image_size >= 48,
                  "n_eval_queries >= 1": self.n_eval_queries >= 1, "n_candidates >= 2": self.n_candidates >= 2,
                  "n_train_per_task >= 1": self.n_train_per_task >= 1, "n_muco_images >= 1": self.n_muco_images >= 1,
                  "1 <= k_turns <= 6": 1 <= self.k_turns <= 6, "n_mbeir_queries >= 1": self.n_mbeir_queries >= 1,
                  "1 <= n_mbeir_negatives <= 8": 1 <= self.n_mbeir_negatives <= 8,
                  "0 <= noise <= 30": 0 <= self.noise <= 30}
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"SyntheticConfig: need {', '.join(failed)}")


# ---------------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskInfo:
    """One MMEB-style task: instructions, closed answer set (``labels``, None for retrieval / grounding)."""

    name: str
    meta_task: str  # classification, vqa, retrieval, grounding
    distribution: str  # IND (training rows written) or OOD (none)
    instruction: str
    target_instruction: str = ""  # for image candidates; "" for text candidates
    labels: tuple[str, ...] | None = None

    def n_candidates(self, config: SyntheticConfig) -> int:
        """Candidates per evaluation query."""
        if self.meta_task == "classification":
            return len(self.labels or ())
        if self.meta_task == "vqa":
            return min(len(self.labels or ()), config.n_candidates)
        if self.meta_task == "grounding":
            return min(9, config.n_candidates)
        return config.n_candidates

    def chance(self, config: SyntheticConfig) -> float:
        """Accuracy (hit@1) of a guess that ignores the image."""
        return 1.0 / self.n_candidates(config)


_VQA = "Represent the given image with the following question"
WORD_QUESTION = "What word is written in the image?"
TASKS: tuple[TaskInfo, ...] = (
    TaskInfo("Shape-Cls", "classification", "IND", "Represent the given image for shape classification",
             labels=SHAPES),
    TaskInfo("Color-Cls", "classification", "IND", "Represent the given image for color classification",
             labels=COLOR_NAMES),
    TaskInfo("Count-VQA", "vqa", "IND", _VQA, labels=COUNT_WORDS[1:5]),
    TaskInfo("Color-VQA", "vqa", "IND", _VQA, labels=COLOR_NAMES),
    TaskInfo("Word-VQA", "vqa", "OOD", _VQA, labels=WORDS),
    TaskInfo("Position-VQA", "vqa", "OOD", _VQA, labels=POSITIONS),
    TaskInfo("Caption-T2I", "retrieval", "IND", "Find me an image that matches the given caption",
             "Represent the given image."),
    TaskInfo("Caption-I2T", "retrieval", "IND", "Find an image caption describing the given image"),
    TaskInfo("Object-Grounding", "grounding", "OOD", "Select the portion of the image that contains the given object",
             "Represent the given cropped image of the object."),
)

TASKS_BY_NAME: dict[str, TaskInfo] = {t.name: t for t in TASKS}


@dataclass
class _Example:
    """A query (text after the instruction, image path or "") and its candidates ``(text, image path)``, gold
    first; ``scene`` / ``answer`` / ``meta`` describe the query for the other formats."""

    body: str
    query_image: str
    cands: list[tuple[str, str]]
    scene: Scene | None = None
    answer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class _Images:
    """Writes every image once (PNG, fixed settings) under ``out/images/<folder>/NNNNNN.png``, and remembers the
    scene each full image shows (crops have none)."""

    def __init__(self, out: Path, size: int, noise: int) -> None:
        self.out, self.size, self.noise = out, size, noise
        self.counters: dict[str, int] = {}
        self.digest = hashlib.sha256()
        self.count = 0
        self.scenes: dict[str, Scene] = {}

    def caption(self, rel: str) -> str | None:
        """The exact caption of the scene an image shows; None for no image (``""``)."""
        if not rel:
            return None
        if rel not in self.scenes:
            raise ValueError(f"{rel} is not the rendering of a whole scene (a crop?): it has no scene caption")
        return caption(self.scenes[rel])

    def save_image(self, image: Image.Image, folder: str, scene: Scene | None = None) -> str:
        n = self.counters.get(folder, 0)
        if n == 0:
            (self.out / "images" / folder).mkdir(parents=True, exist_ok=True)
        self.counters[folder] = n + 1
        rel = f"images/{folder}/{n:06d}.png"
        image.save(self.out / rel, format="PNG", compress_level=6)
        self.digest.update(rel.encode() + b"\0" + image.tobytes())
        self.count += 1
        if scene is not None:
            self.scenes[rel] = scene
        return rel

    def save(self, scene: Scene, rng: np.random.Generator, folder: str) -> str:
        return self.save_image(render(scene, self.size, rng=rng, noise=self.noise), folder, scene)


def _label_cands(rng: np.random.Generator, labels: Sequence[str], gold: str, n: int) -> list[tuple[str, str]]:
    others = _sample(rng, [x for x in labels if x != gold], n - 1)
    return [(x, "") for x in [gold, *others]]


def _single_object(images: _Images, rng: np.random.Generator, folder: str, **fixed: str) -> tuple[Scene, str]:
    word, row = _maybe_word(rng, 0.25)
    o = SceneObject(fixed.get("shape") or _pick(rng, SHAPES), fixed.get("color") or _pick(rng, COLOR_NAMES),
                    _pick(rng, SIZES), int(_pick(rng, _free(row))))
    scene = Scene((o,), word, row)
    return scene, images.save(scene, rng, folder)


def _shape_cls(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    scene, path = _single_object(images, rng, folder, shape=gold)
    return _Example("", path, _label_cands(rng, SHAPES, gold, n), scene, gold)


def _color_cls(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    scene, path = _single_object(images, rng, folder, color=gold)
    return _Example("", path, _label_cands(rng, COLOR_NAMES, gold, n), scene, gold)


def _random_objects(rng: np.random.Generator, cells: Sequence[int], shapes: Sequence[str],
                    avoid: Sequence[tuple[str, str]] = ()) -> list[SceneObject]:
    combos = [(c, s) for c in COLOR_NAMES for s in shapes if (c, s) not in avoid]
    objects = []
    for cell in cells:
        color, shape = _pick(rng, combos)
        objects.append(SceneObject(shape, color, _pick(rng, SIZES), int(cell)))
    return objects


def _count_vqa(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    count, shape = COUNT_WORDS.index(gold), _pick(rng, SHAPES)
    word, row = _maybe_word(rng, 0.3)
    free = _free(row)
    extra = int(rng.integers(0, min(2, len(free) - count) + 1))
    cells = _sample(rng, free, count + extra)
    objects = _random_objects(rng, cells[:count], [shape])
    objects += _random_objects(rng, cells[count:], [s for s in SHAPES if s != shape])
    scene = Scene(tuple(objects), word, row)
    return _Example(f"How many {PLURALS[shape]} are there?", images.save(scene, rng, folder),
                    _label_cands(rng, COUNT_WORDS[1:5], gold, n), scene, gold, {"shape": shape})


def _color_vqa(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    shape = _pick(rng, SHAPES)
    word, row = _maybe_word(rng, 0.3)
    cells = _sample(rng, _free(row), 1 + int(rng.integers(1, 3)))
    target = SceneObject(shape, gold, _pick(rng, SIZES), int(cells[0]))
    objects = [target] + _random_objects(rng, cells[1:], [s for s in SHAPES if s != shape])
    scene = Scene(tuple(objects), word, row)
    return _Example(f"What color is the {shape}?", images.save(scene, rng, folder),
                    _label_cands(rng, COLOR_NAMES, gold, n), scene, gold, {"shape": shape})


def _word_vqa(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    row = int(rng.integers(3))
    cells = _sample(rng, _free(row), int(rng.integers(1, 4)))
    scene = Scene(tuple(_random_objects(rng, cells, SHAPES)), gold, row)
    return _Example(WORD_QUESTION, images.save(scene, rng, folder),
                    _label_cands(rng, WORDS, gold, n), scene, gold)


def _position_vqa(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    cell = POSITIONS.index(gold)
    target = SceneObject(_pick(rng, SHAPES), _pick(rng, COLOR_NAMES), _pick(rng, SIZES), cell)
    word, row = _maybe_word(rng, 0.3, [r for r in range(3) if r != cell // 3])
    cells = _sample(rng, _free(row, exclude=[cell]), int(rng.integers(1, 4)))
    objects = [target] + _random_objects(rng, cells, SHAPES, avoid=[(target.color, target.shape)])
    scene = Scene(tuple(objects), word, row)
    return _Example(f"Where is the {target.name}?", images.save(scene, rng, folder),
                    _label_cands(rng, POSITIONS, gold, n), scene, gold, {"target": target})


def _caption_scenes(rng: np.random.Generator, n: int) -> list[Scene]:
    """``n`` distinct single edits of a hidden random scene; the first is the gold one (the edits are exchangeable,
    so the gold scene is not the "centre" of the candidates: comparing candidates among themselves does not help)."""
    return [scene for scene, _ in _distinct_edits(rng, random_scene(rng), n)]


def _caption_t2i(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    scenes = _caption_scenes(rng, n)
    return _Example(caption(scenes[0]), "", [("", images.save(s, rng, folder)) for s in scenes], scenes[0])


def _caption_i2t(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    scenes = _caption_scenes(rng, n)
    return _Example("", images.save(scenes[0], rng, folder), [(caption(s), "") for s in scenes], scenes[0])


def _grounding(images: _Images, rng: np.random.Generator, gold: str, n: int, folder: str) -> _Example:
    """Nine objects with distinct colour + shape fill the grid; the candidates are crops of the cells."""
    cell = POSITIONS.index(gold)
    combos = _sample(rng, [(c, s) for c in COLOR_NAMES for s in SHAPES], 9)
    scene = Scene(tuple(SceneObject(s, c, _pick(rng, SIZES), k) for k, (c, s) in enumerate(combos)))
    image = render(scene, images.size, rng=rng, noise=images.noise)
    path = images.save_image(image, folder, scene)
    order = [cell] + _sample(rng, [k for k in range(9) if k != cell], n - 1)
    crops = [("", images.save_image(image.crop(cell_box(k, images.size)), f"{folder}/crops")) for k in order]
    target = scene.objects[cell]
    return _Example(f"the {target.name}", path, crops, scene, gold, {"target": target})


_BUILDERS = {"Shape-Cls": _shape_cls, "Color-Cls": _color_cls, "Count-VQA": _count_vqa, "Color-VQA": _color_vqa,
             "Word-VQA": _word_vqa, "Position-VQA": _position_vqa, "Caption-T2I": _caption_t2i,
             "Caption-I2T": _caption_i2t, "Object-Grounding": _grounding}


def _balanced(rng: np.random.Generator, labels: Sequence[str], n: int) -> list[str]:
    """``n`` gold labels, each label ``n // L`` or ``n // L + 1`` times, in random order."""
    golds = list(labels) * (n // len(labels)) + _sample(rng, labels, n % len(labels))
    return [golds[int(i)] for i in rng.permutation(n)]


def _stream(seed: int, *names: str) -> np.random.Generator:
    """An independent generator per (seed, split, task): changing one task leaves the others' data unchanged."""
    keys = [int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") for name in names]
    return np.random.default_rng([seed, *keys])


def _examples(task: TaskInfo, images: _Images, cfg: SyntheticConfig, split: str, n: int, n_cands: int
              ) -> list[_Example]:
    rng = _stream(cfg.seed, split, task.name)
    labels = task.labels or (POSITIONS if task.meta_task == "grounding" else ("",))
    builder = _BUILDERS[task.name]
    return [builder(images, rng, gold, n_cands, f"{split}/{task.name}") for gold in _balanced(rng, labels, n)]


def _texts(task: TaskInfo, ex: _Example) -> tuple[str, list[str]]:
    """``qry_text`` and ``tgt_text`` as the real MMEB rows write them (Phi-3 image token before imaged text)."""
    instruction = f"{task.instruction}: {ex.body}" if ex.body else task.instruction
    query = (f"{IMAGE_TOKEN}\n" if ex.query_image else "") + instruction + "\n"
    targets = [f"{IMAGE_TOKEN}\n{task.target_instruction}\n" if image else text for text, image in ex.cands]
    return query, targets


# ------------------------------------------------------------------------------------------------------ MuCo


# The question types of a multi-object pack, in order (the first k_turns). The packs of one batch must ask the same
# types in the same order: different orders would be a text signature that the causal turns of a query conversation
# and its target conversation share (turn k sees the types of turns < k on both sides), so a model could pair them
# without looking at the image. Each order gets a file of its own (rotations of this one, so that every type is also
# asked first, as MMEB-eval asks it), and training on the folder takes each batch from one file.
MUCO_QUESTION_ORDER: tuple[str, ...] = ("count", "color_of", "colors", "word", "count", "color_of")


def _muco_pairs(scene: Scene, rng: np.random.Generator, k: int) -> list[dict[str, str]] | None:
    """``k`` query / positive pairs about one scene, phrased as the in-distribution MMEB tasks (the instruction, then
    the question), of the types ``MUCO_QUESTION_ORDER[:k]`` in that order, with distinct queries and positives; None
    when the scene cannot supply them.

    Queries may name shapes but answers never do (counts, colours, the word): in a multi-turn pack every turn sees
    the earlier turns, so a shape named on both sides would let the text alone pair a query conversation with its
    target conversation. Only the image links them. Captions, which name everything, get packs of their own, and
    one-object scenes packs with the classification instructions (:func:`_write_muco`)."""
    shapes = list(dict.fromkeys(o.shape for o in scene.objects))
    shape_counts = Counter(o.shape for o in scene.objects)
    pools: dict[str, list[tuple[str, str, str]]] = {
        "count": [("vqa", f"{_VQA}: How many {PLURALS[s]} are there?", COUNT_WORDS[shape_counts[s]]) for s in shapes],
        "color_of": [("vqa", f"{_VQA}: What color is the {o.shape}?", o.color) for o in scene.objects
                     if shape_counts[o.shape] == 1],
        "colors": [("classification", "Which colors are in the image?",
                    _join(list(dict.fromkeys(o.color for o in scene.objects))))],
        "word": [("vqa", f"{_VQA}: {WORD_QUESTION}", scene.word)] if scene.word else [],
    }
    pairs: list[dict[str, str]] = []
    for kind in MUCO_QUESTION_ORDER[:k]:
        options = [(t, q, a) for t, q, a in pools[kind]
                   if q not in {p["query"] for p in pairs} and a not in {p["positive"] for p in pairs}]
        if not options:
            return None
        task_kind, query, positive = options[int(rng.integers(len(options)))]
        pairs.append({"kind": task_kind, "query": query, "positive": positive})
    return pairs


def _single_object_pairs(scene: Scene) -> list[dict[str, str]]:
    """The pairs of a one-object scene with a word: Shape-Cls, Color-Cls, Word-VQA, in that order (see
    ``MUCO_QUESTION_ORDER``). No query names the shape, so the answer may."""
    (o,) = scene.objects
    return [{"kind": "classification", "query": TASKS_BY_NAME["Shape-Cls"].instruction, "positive": o.shape},
            {"kind": "classification", "query": TASKS_BY_NAME["Color-Cls"].instruction, "positive": o.color},
            {"kind": "vqa", "query": f"{_VQA}: {WORD_QUESTION}", "positive": scene.word}]


def _rotated(pairs: list[dict[str, str]], r: int) -> list[dict[str, str]]:
    return pairs[r:] + pairs[:r]


def _write_muco(out: Path, images: _Images, cfg: SyntheticConfig) -> None:
    """One file per question-type order (``muco/<family>-r<k>.jsonl``: the family's order rotated left by k, so
    every type also comes first, as in the single-turn MMEB-eval queries; ``muco/caption.jsonl``)."""
    rng = _stream(cfg.seed, "train", "muco")
    files: dict[str, list[dict[str, Any]]] = {}
    for _ in range(cfg.n_muco_images):
        while True:
            scene = random_scene(rng, int(rng.integers(2, 5)), word_prob=1.0, unique=True)
            draw = rng.random()
            if draw < 0.25:  # a caption names everything: a pack of its own (the Caption-I2T task)
                name, pairs = "caption", [{"kind": "retrieval", "query": TASKS_BY_NAME["Caption-I2T"].instruction,
                                           "positive": caption(scene)}]
            elif draw < 0.5:  # one object: the classification tasks' instructions (they never name the shape)
                scene = random_scene(rng, 1, word_prob=1.0)
                pairs = _single_object_pairs(scene)
                r = int(rng.integers(len(pairs)))
                name, pairs = f"one-object-r{r}", _rotated(pairs, r)
            else:
                pairs = _muco_pairs(scene, rng, cfg.k_turns)
                if pairs is not None:
                    r = int(rng.integers(len(pairs)))
                    name, pairs = f"objects-r{r}", _rotated(pairs, r)
            if pairs is not None:
                break
        files.setdefault(name, []).append({"image": images.save(scene, rng, "train/muco"), "pairs": pairs})
    for name, lines in sorted(files.items()):
        _write_jsonl(out / "muco" / f"{name}.jsonl", lines)


# ---------------------------------------------------------------------------------------------------- M-BEIR


_MODALITY = {(True, False): "text", (False, True): "image", (True, True): "image,text"}
_MBEIR_PROMPTS = {
    0: ["Identify the image showcasing the described scene.", "Retrieve an image that matches the given caption.",
        "Find a picture that fits the description.", "Show me an image that best matches the caption."],
    3: ["Find a caption for the scene in this image.", "Retrieve the caption that describes this image.",
        "Select the description that matches the given picture.", "Find the text that best describes this image."],
    7: ["Apply the given change to the image and retrieve the resulting image.",
        "Find the image that results from this modification.",
        "Retrieve the picture after making the described change.",
        "Given an image and an edit instruction, find the edited image."],
    6: ["Answer the question about the image.", "Retrieve the answer to the question about this picture.",
        "Find the text that answers the question for this image.",
        "Select the correct answer given the image and the question."],
}


class _MbeirDataset:
    """One M-BEIR dataset: query and candidate ids ``"<dataset_id>:<n>"``; a local pool per task."""

    def __init__(self, name: str, dataset_id: int) -> None:
        self.name, self.id = name, dataset_id
        self.n_queries = self.n_candidates = 0
        self.pools: dict[int, list[dict]] = {}
        self.queries: dict[int, list[dict]] = {}
        self.index: dict[tuple[int, str], str] = {}  # (task, content key) -> did

    def candidate(self, task_id: int, key: str, txt: str | None, img_path: str | None) -> str:
        """The did of a candidate (added to the task's local pool once per content key)."""
        if (task_id, key) not in self.index:
            self.n_candidates += 1
            did = f"{self.id}:{self.n_candidates}"
            self.index[(task_id, key)] = did
            self.pools.setdefault(task_id, []).append(
                {"did": did, "txt": txt, "img_path": img_path,
                 "modality": _MODALITY[(txt is not None, img_path is not None)], "src_content": None})
        return self.index[(task_id, key)]

    def query(self, task_id: int, txt: str | None, img_path: str | None, pos: list[str], neg: list[str]) -> None:
        self.n_queries += 1
        self.queries.setdefault(task_id, []).append(
            {"qid": f"{self.id}:{self.n_queries}", "query_txt": txt, "query_img_path": img_path,
             "query_modality": _MODALITY[(txt is not None, img_path is not None)], "query_src_content": None,
             "pos_cand_list": pos, "neg_cand_list": [d for d in neg if d not in pos], "task_id": task_id})


def _count_answer(shape: str, count: int) -> str:
    return f"there is one {shape}" if count == 1 else f"there are {COUNT_WORDS[count]} {PLURALS[shape]}"


def _write_mbeir(out: Path, images: _Images, cfg: SyntheticConfig) -> dict[str, Any]:
    shapes, edits, qa = _MbeirDataset("shapes", 0), _MbeirDataset("shapeedit", 1), _MbeirDataset("shapeqa", 2)
    owner: dict[str, int] = {}  # scene key -> the dataset whose image pool holds it (no scene in two pools)
    n, n_neg = cfg.n_mbeir_queries, cfg.n_mbeir_negatives

    def claim(scenes: Sequence[Scene], dataset: _MbeirDataset) -> bool:
        if any(owner.get(s.key, dataset.id) != dataset.id for s in scenes):
            return False
        owner.update({s.key: dataset.id for s in scenes})
        return True

    def image_did(dataset: _MbeirDataset, task_id: int, scene: Scene, rng: np.random.Generator) -> str:
        """The did of the scene's image in the task's pool (rendered and saved the first time only)."""
        did = dataset.index.get((task_id, scene.key))
        if did is None:
            path = images.save(scene, rng, f"mbeir/{dataset.name}_task{task_id}")
            did = dataset.candidate(task_id, scene.key, None, path)
            paths[did] = path
        return did

    paths: dict[str, str] = {}

    rng = _stream(cfg.seed, "mbeir", "shapes-task0")  # caption -> image
    for _ in range(n):
        while not claim(scenes := _caption_scenes(rng, 1 + n_neg), shapes):
            pass
        dids = [image_did(shapes, 0, s, rng) for s in scenes]
        shapes.query(0, caption(scenes[0]), None, dids[:1], dids[1:])

    rng = _stream(cfg.seed, "mbeir", "shapes-task3")  # image -> caption
    for _ in range(n):
        scenes = _caption_scenes(rng, 1 + n_neg)
        dids = [shapes.candidate(3, s.key, caption(s), None) for s in scenes]
        shapes.query(3, None, images.save(scenes[0], rng, "mbeir/shapes_task3"), dids[:1], dids[1:])

    rng = _stream(cfg.seed, "mbeir", "shapeedit-task7")  # image + edit -> edited image (reference image in pool)
    for _ in range(n):
        while True:
            reference = random_scene(rng)
            (target, instruction), *rest = _distinct_edits(rng, reference, 1 + n_neg)
            others = [scene for scene, _ in rest]
            if claim([target, reference, *others], edits):
                break
        dids = [image_did(edits, 7, s, rng) for s in [target, reference, *others]]
        edits.query(7, instruction, paths[dids[1]], dids[:1], dids[1:])  # the reference image is also a negative

    rng = _stream(cfg.seed, "mbeir", "shapeqa-task6")  # image + question -> answer sentence
    for s in SHAPES:
        for c in range(1, 5):
            qa.candidate(6, f"count:{s}:{c}", _count_answer(s, c), None)
    for s in SHAPES:
        for c in COLOR_NAMES:
            qa.candidate(6, f"color:{s}:{c}", f"the {s} is {c}", None)
    for w in WORDS:
        qa.candidate(6, f"word:{w}", f"the word is '{w}'", None)
    kinds = [("count", _count_vqa, COUNT_WORDS[1:5]), ("color", _color_vqa, COLOR_NAMES), ("word", _word_vqa, WORDS)]
    per_kind = _balanced(rng, [k[0] for k in kinds], n)
    golds = {name: iter(_balanced(rng, labels, per_kind.count(name))) for name, _, labels in kinds}
    for kind in per_kind:
        name, builder, labels = next(k for k in kinds if k[0] == kind)
        ex = builder(images, rng, next(golds[name]), len(labels), "mbeir/shapeqa_task6")
        if name == "count":
            keys = [f"count:{ex.meta['shape']}:{COUNT_WORDS.index(t)}" for t, _ in ex.cands]
        elif name == "color":
            keys = [f"color:{ex.meta['shape']}:{t}" for t, _ in ex.cands]
        else:
            keys = [f"word:{t}" for t, _ in ex.cands]
        dids = [qa.index[(6, k)] for k in keys[:1 + n_neg]]
        qa.query(6, ex.body, ex.query_image, dids[:1], dids[1:])

    tasks = [(shapes, 0, "text", "image"), (shapes, 3, "image", "text"), (edits, 7, "image,text", "image"),
             (qa, 6, "image,text", "text")]
    root = out / "mbeir"
    union: list[dict] = []
    summary = []
    for dataset, task_id, _, _ in tasks:
        stem = f"mbeir_{dataset.name}_task{task_id}"
        queries, pool = dataset.queries[task_id], dataset.pools[task_id]
        _write_jsonl(root / "query" / "test" / f"{stem}_test.jsonl", queries)
        _write_jsonl(root / "cand_pool" / "local" / f"{stem}_cand_pool.jsonl", pool)
        qrels = [f"{q['qid']} 0 {did} 1 {task_id}\n" for q in queries for did in q["pos_cand_list"]]
        _write_text(root / "qrels" / "test" / f"{stem}_test_qrels.txt", "".join(qrels))
        union += pool
        summary.append({"dataset": dataset.name, "dataset_id": dataset.id, "task_id": task_id,
                        "queries": len(queries), "candidates": len(pool)})
    _write_jsonl(root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl", union)
    rows = ["query_modality\tcand_modality\ttask_id\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"]
    rows += [f"{qm}\t{cm}\t{task_id}\t{d.id}\t" + "\t".join(_MBEIR_PROMPTS[task_id]) + "\n"
             for d, task_id, qm, cm in tasks]
    _write_text(root / "instructions" / "query_instructions.tsv", "".join(rows))
    return {"image_root": ".", "tasks": summary}


# -------------------------------------------------------------------------------------------------- writing


def _write_text(path: Path, text: str) -> None:
    write_text(path, text, newline="\n")  # atomic: an interrupted run leaves no truncated file


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    _write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


_OWNED = ("images", "mmeb_eval", "mmeb_train", "muco", "mbeir", "manifest.json")


def _prepare(out: Path) -> None:
    """Remove what an earlier ``generate`` wrote there; refuse a non-empty folder it did not write."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    manifest = out / "manifest.json"
    ours = False
    if manifest.is_file():
        try:
            ours = json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR
        except (json.JSONDecodeError, AttributeError):
            ours = False
    if not ours and any(out.iterdir()):
        raise OutputPathError(f"'{out}' is not empty and holds no synthetic-data manifest (mmembed synthetic did not "
                              f"write it): give a new or empty folder.")
    for name in _OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def generate(out: str | Path, config: SyntheticConfig | None = None) -> Path:
    """Write the benchmark and training data under ``out`` (see the module docstring for the layout) and return
    ``out``. The same config gives byte-identical JSON-lines / YAML / TSV files and identical image pixels; an
    earlier output there is replaced, and a non-empty folder it did not write is refused (:class:`OutputPathError`).
    Text files are written atomically (:mod:`mmembed.files`)."""
    cfg = config or SyntheticConfig()
    out = Path(out)
    _prepare(out)
    images = _Images(out, cfg.image_size, cfg.noise)
    task_rows = []
    for task in TASKS:
        n_cands = task.n_candidates(cfg)
        rows = []
        for ex in _examples(task, images, cfg, "eval", cfg.n_eval_queries, n_cands):
            query, targets = _texts(task, ex)
            rows.append({"qry_inst": task.instruction, "qry_text": query, "qry_img_path": ex.query_image,
                         "tgt_inst": task.target_instruction, "tgt_text": targets,
                         "tgt_img_path": [image for _, image in ex.cands]})
        _write_jsonl(out / "mmeb_eval" / f"{task.name}.jsonl", rows)
        n_train = 0
        if task.distribution == "IND":
            train = []
            for ex in _examples(task, images, cfg, "train", cfg.n_train_per_task, 2):
                query, targets = _texts(task, ex)
                train.append({"qry": query, "qry_image_path": ex.query_image, "pos_text": targets[0],
                              "pos_image_path": ex.cands[0][1], "neg_text": targets[1],
                              "neg_image_path": ex.cands[1][1], "qry_sentence": images.caption(ex.query_image),
                              "pos_sentence": images.caption(ex.cands[0][1])})
            _write_jsonl(out / "mmeb_train" / f"{task.name}.jsonl", train)
            n_train = len(train)
        task_rows.append({"name": task.name, "meta_task": task.meta_task, "distribution": task.distribution,
                          "n_candidates": n_cands, "chance": task.chance(cfg), "eval_queries": len(rows),
                          "train_rows": n_train})
    _write_text(out / "mmeb_eval" / "tasks.yaml", "tasks:\n" + "".join(
        f"  - {{name: {t.name}, meta_task: {t.meta_task}, distribution: {t.distribution}}}\n" for t in TASKS))
    _write_muco(out, images, cfg)
    mbeir = _write_mbeir(out, images, cfg)
    files = sorted(p for p in out.rglob("*") if p.suffix in (".jsonl", ".yaml", ".tsv", ".txt") and p.is_file())
    manifest = {
        "generator": GENERATOR, "version": VERSION, "seed": cfg.seed, "config": dataclasses.asdict(cfg),
        "tasks": task_rows, "mbeir": mbeir,
        "images": {"count": images.count, "pixels_sha256": images.digest.hexdigest()},
        "files": {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }
    _write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out
