"""The tasks of the synthetic benchmark (MMEB-style classification, VQA, retrieval, grounding): their instructions
and closed answer sets, and one example builder per task that draws a scene, saves its image and lists the
candidates, gold first. Every task's answer is visible in the image and absent from the query text, and the gold
labels are balanced (``balanced``), so any text-only guess is at chance."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import SyntheticConfig
from .drawing import ImageWriter, cell_box, render
from .scenes import (
    COLOR_NAMES,
    COUNT_WORDS,
    PLURALS,
    POSITIONS,
    SHAPES,
    SIZES,
    WORDS,
    Scene,
    SceneObject,
    caption,
    cells_outside,
    distinct_edits,
    maybe_word,
    pick,
    random_scene,
    sample,
)

__all__ = [
    "BUILDERS", "TASKS", "TASKS_BY_NAME", "VQA_INSTRUCTION", "WORD_QUESTION", "Builder", "Example", "TaskInfo",
    "balanced", "caption_scenes", "examples", "stream",
]


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


VQA_INSTRUCTION = "Represent the given image with the following question"
WORD_QUESTION = "What word is written in the image?"
TASKS: tuple[TaskInfo, ...] = (
    TaskInfo("Shape-Cls", "classification", "IND", "Represent the given image for shape classification",
             labels=SHAPES),
    TaskInfo("Color-Cls", "classification", "IND", "Represent the given image for color classification",
             labels=COLOR_NAMES),
    TaskInfo("Count-VQA", "vqa", "IND", VQA_INSTRUCTION, labels=COUNT_WORDS[1:5]),
    TaskInfo("Color-VQA", "vqa", "IND", VQA_INSTRUCTION, labels=COLOR_NAMES),
    TaskInfo("Word-VQA", "vqa", "OOD", VQA_INSTRUCTION, labels=WORDS),
    TaskInfo("Position-VQA", "vqa", "OOD", VQA_INSTRUCTION, labels=POSITIONS),
    TaskInfo("Caption-T2I", "retrieval", "IND", "Find me an image that matches the given caption",
             "Represent the given image."),
    TaskInfo("Caption-I2T", "retrieval", "IND", "Find an image caption describing the given image"),
    TaskInfo("Object-Grounding", "grounding", "OOD", "Select the portion of the image that contains the given object",
             "Represent the given cropped image of the object."),
)

TASKS_BY_NAME: dict[str, TaskInfo] = {t.name: t for t in TASKS}


@dataclass
class Example:
    """A query (text after the instruction, image path or "") and its candidates ``(text, image path)``, gold
    first; ``scene`` / ``answer`` / ``meta`` describe the query for the other formats."""

    body: str
    query_image: str
    cands: list[tuple[str, str]]
    scene: Scene | None = None
    answer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)



def _label_cands(rng: np.random.Generator, labels: Sequence[str], gold: str, n: int) -> list[tuple[str, str]]:
    others = sample(rng, [x for x in labels if x != gold], n - 1)
    return [(x, "") for x in [gold, *others]]


def _single_object(images: ImageWriter, rng: np.random.Generator, folder: str, **fixed: str) -> tuple[Scene, str]:
    word, row = maybe_word(rng, 0.25)
    o = SceneObject(fixed.get("shape") or pick(rng, SHAPES), fixed.get("color") or pick(rng, COLOR_NAMES),
                    pick(rng, SIZES), int(pick(rng, cells_outside(row))))
    scene = Scene((o,), word, row)
    return scene, images.save(scene, rng, folder)


def _shape_cls(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    scene, path = _single_object(images, rng, folder, shape=gold)
    return Example("", path, _label_cands(rng, SHAPES, gold, n), scene, gold)


def _color_cls(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    scene, path = _single_object(images, rng, folder, color=gold)
    return Example("", path, _label_cands(rng, COLOR_NAMES, gold, n), scene, gold)


def _random_objects(rng: np.random.Generator, cells: Sequence[int], shapes: Sequence[str],
                    avoid: Sequence[tuple[str, str]] = ()) -> list[SceneObject]:
    combos = [(c, s) for c in COLOR_NAMES for s in shapes if (c, s) not in avoid]
    objects = []
    for cell in cells:
        color, shape = pick(rng, combos)
        objects.append(SceneObject(shape, color, pick(rng, SIZES), int(cell)))
    return objects


def _count_vqa(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    count, shape = COUNT_WORDS.index(gold), pick(rng, SHAPES)
    word, row = maybe_word(rng, 0.3)
    free = cells_outside(row)
    extra = int(rng.integers(0, min(2, len(free) - count) + 1))
    cells = sample(rng, free, count + extra)
    objects = _random_objects(rng, cells[:count], [shape])
    objects += _random_objects(rng, cells[count:], [s for s in SHAPES if s != shape])
    scene = Scene(tuple(objects), word, row)
    return Example(f"How many {PLURALS[shape]} are there?", images.save(scene, rng, folder),
                    _label_cands(rng, COUNT_WORDS[1:5], gold, n), scene, gold, {"shape": shape})


def _color_vqa(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    shape = pick(rng, SHAPES)
    word, row = maybe_word(rng, 0.3)
    cells = sample(rng, cells_outside(row), 1 + int(rng.integers(1, 3)))
    target = SceneObject(shape, gold, pick(rng, SIZES), int(cells[0]))
    objects = [target] + _random_objects(rng, cells[1:], [s for s in SHAPES if s != shape])
    scene = Scene(tuple(objects), word, row)
    return Example(f"What color is the {shape}?", images.save(scene, rng, folder),
                    _label_cands(rng, COLOR_NAMES, gold, n), scene, gold, {"shape": shape})


def _word_vqa(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    row = int(rng.integers(3))
    cells = sample(rng, cells_outside(row), int(rng.integers(1, 4)))
    scene = Scene(tuple(_random_objects(rng, cells, SHAPES)), gold, row)
    return Example(WORD_QUESTION, images.save(scene, rng, folder),
                    _label_cands(rng, WORDS, gold, n), scene, gold)


def _position_vqa(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    cell = POSITIONS.index(gold)
    target = SceneObject(pick(rng, SHAPES), pick(rng, COLOR_NAMES), pick(rng, SIZES), cell)
    word, row = maybe_word(rng, 0.3, [r for r in range(3) if r != cell // 3])
    cells = sample(rng, cells_outside(row, exclude=[cell]), int(rng.integers(1, 4)))
    objects = [target] + _random_objects(rng, cells, SHAPES, avoid=[(target.color, target.shape)])
    scene = Scene(tuple(objects), word, row)
    return Example(f"Where is the {target.name}?", images.save(scene, rng, folder),
                    _label_cands(rng, POSITIONS, gold, n), scene, gold, {"target": target})


def caption_scenes(rng: np.random.Generator, n: int) -> list[Scene]:
    """``n`` distinct single edits of a hidden random scene; the first is the gold one (the edits are exchangeable,
    so the gold scene is not the "centre" of the candidates: comparing candidates among themselves does not help)."""
    return [scene for scene, _ in distinct_edits(rng, random_scene(rng), n)]


def _caption_t2i(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    scenes = caption_scenes(rng, n)
    return Example(caption(scenes[0]), "", [("", images.save(s, rng, folder)) for s in scenes], scenes[0])


def _caption_i2t(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    scenes = caption_scenes(rng, n)
    return Example("", images.save(scenes[0], rng, folder), [(caption(s), "") for s in scenes], scenes[0])


def _grounding(images: ImageWriter, rng: np.random.Generator, gold: str, n: int, folder: str) -> Example:
    """Nine objects with distinct colour + shape fill the grid; the candidates are crops of the cells."""
    cell = POSITIONS.index(gold)
    combos = sample(rng, [(c, s) for c in COLOR_NAMES for s in SHAPES], 9)
    scene = Scene(tuple(SceneObject(s, c, pick(rng, SIZES), k) for k, (c, s) in enumerate(combos)))
    image = render(scene, images.size, rng=rng, noise=images.noise)
    path = images.save_image(image, folder, scene)
    order = [cell] + sample(rng, [k for k in range(9) if k != cell], n - 1)
    crops = [("", images.save_image(image.crop(cell_box(k, images.size)), f"{folder}/crops")) for k in order]
    target = scene.objects[cell]
    return Example(f"the {target.name}", path, crops, scene, gold, {"target": target})


Builder = Callable[[ImageWriter, np.random.Generator, str, int, str], Example]
"""``builder(images, rng, gold, n_candidates, folder)``: one example whose answer is ``gold``."""
BUILDERS: dict[str, Builder] = {
    "Shape-Cls": _shape_cls, "Color-Cls": _color_cls, "Count-VQA": _count_vqa, "Color-VQA": _color_vqa,
    "Word-VQA": _word_vqa, "Position-VQA": _position_vqa, "Caption-T2I": _caption_t2i, "Caption-I2T": _caption_i2t,
    "Object-Grounding": _grounding,
}


def balanced(rng: np.random.Generator, labels: Sequence[str], n: int) -> list[str]:
    """``n`` gold labels, each label ``n // L`` or ``n // L + 1`` times, in random order."""
    golds = list(labels) * (n // len(labels)) + sample(rng, labels, n % len(labels))
    return [golds[int(i)] for i in rng.permutation(n)]


def stream(seed: int, *names: str) -> np.random.Generator:
    """An independent generator per (seed, split, task): changing one task leaves the others' data unchanged."""
    keys = [int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") for name in names]
    return np.random.default_rng([seed, *keys])


def examples(task: TaskInfo, images: ImageWriter, cfg: SyntheticConfig, split: str, n: int, n_cands: int
             ) -> list[Example]:
    """``n`` examples of ``task`` for ``split`` ("eval" / "train"), balanced over its labels, from the task's own
    random stream (images under ``images/<split>/<task>``)."""
    rng = stream(cfg.seed, split, task.name)
    labels = task.labels or (POSITIONS if task.meta_task == "grounding" else ("",))
    builder = BUILDERS[task.name]
    return [builder(images, rng, gold, n_cands, f"{split}/{task.name}") for gold in balanced(rng, labels, n)]
