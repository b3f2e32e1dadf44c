"""The MuCo multi-turn format of the synthetic benchmark: ``muco/*.jsonl``, one image and up to ``k_turns`` query /
positive pairs about it a line, one file per question-type order (train on the folder, a mixture that takes each
batch from one file)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .config import SyntheticConfig
from .drawing import ImageWriter
from .scenes import COUNT_WORDS, PLURALS, Scene, caption, join_words, random_scene
from .tasks import TASKS_BY_NAME, VQA_INSTRUCTION, WORD_QUESTION, stream
from .writing import write_jsonl

__all__ = ["MUCO_QUESTION_ORDER", "muco_pairs", "write_muco"]


# The question types of a multi-object pack, in order (the first k_turns). The packs of one batch must ask the same
# types in the same order: different orders would be a text signature that the causal turns of a query conversation
# and its target conversation share (turn k sees the types of turns < k on both sides), so a model could pair them
# without looking at the image. Each order gets a file of its own (rotations of this one, so that every type is also
# asked first, as MMEB-eval asks it), and training on the folder takes each batch from one file.
MUCO_QUESTION_ORDER: tuple[str, ...] = ("count", "color_of", "colors", "word", "count", "color_of")


def muco_pairs(scene: Scene, rng: np.random.Generator, k: int) -> list[dict[str, str]] | None:
    """``k`` query / positive pairs about one scene, phrased as the in-distribution MMEB tasks (the instruction, then
    the question), of the types ``MUCO_QUESTION_ORDER[:k]`` in that order, with distinct queries and positives; None
    when the scene cannot supply them.

    Queries may name shapes but answers never do (counts, colours, the word): in a multi-turn pack every turn sees
    the earlier turns, so a shape named on both sides would let the text alone pair a query conversation with its
    target conversation. Only the image links them. Captions, which name everything, get packs of their own, and
    one-object scenes packs with the classification instructions (:func:`write_muco`)."""
    shapes = list(dict.fromkeys(o.shape for o in scene.objects))
    shape_counts = Counter(o.shape for o in scene.objects)
    pools: dict[str, list[tuple[str, str, str]]] = {
        "count": [("vqa", f"{VQA_INSTRUCTION}: How many {PLURALS[s]} are there?", COUNT_WORDS[shape_counts[s]])
                  for s in shapes],
        "color_of": [("vqa", f"{VQA_INSTRUCTION}: What color is the {o.shape}?", o.color) for o in scene.objects
                     if shape_counts[o.shape] == 1],
        "colors": [("classification", "Which colors are in the image?",
                    join_words(list(dict.fromkeys(o.color for o in scene.objects))))],
        "word": [("vqa", f"{VQA_INSTRUCTION}: {WORD_QUESTION}", scene.word)] if scene.word else [],
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
            {"kind": "vqa", "query": f"{VQA_INSTRUCTION}: {WORD_QUESTION}", "positive": scene.word}]


def _rotated(pairs: list[dict[str, str]], r: int) -> list[dict[str, str]]:
    return pairs[r:] + pairs[:r]


def write_muco(out: Path, images: ImageWriter, cfg: SyntheticConfig) -> None:
    """One file per question-type order (``muco/<family>-r<k>.jsonl``: the family's order rotated left by k, so
    every type also comes first, as in the single-turn MMEB-eval queries; ``muco/caption.jsonl``)."""
    rng = stream(cfg.seed, "train", "muco")
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
                pairs = muco_pairs(scene, rng, cfg.k_turns)
                if pairs is not None:
                    r = int(rng.integers(len(pairs)))
                    name, pairs = f"objects-r{r}", _rotated(pairs, r)
            if pairs is not None:
                break
        files.setdefault(name, []).append({"image": images.save(scene, rng, "train/muco"), "pairs": pairs})
    for name, lines in sorted(files.items()):
        write_jsonl(out / "muco" / f"{name}.jsonl", lines)

