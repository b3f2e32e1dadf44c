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

Modules: ``scenes`` (vocabulary, scenes, edits, captions), ``drawing`` (rendering, image writing), ``tasks`` (the
MMEB-style tasks and their example builders), ``config`` (``SyntheticConfig``), the writers ``mmeb``, ``muco`` and
``mbeir``, and ``benchmark`` (``generate``). This package sits above ``errors`` / ``files`` only; nothing in mmembed
imports it except the ``mmembed synthetic`` command (lazily).
"""

from __future__ import annotations

from .benchmark import GENERATOR, VERSION, generate
from .config import SyntheticConfig
from .drawing import BACKGROUND, TEXT_COLOR, cell_box, render
from .mmeb import IMAGE_TOKEN
from .muco import MUCO_QUESTION_ORDER, muco_pairs
from .scenes import (
    COLOR_NAMES,
    COLORS,
    COUNT_WORDS,
    MAX_OBJECTS,
    PLURALS,
    POSITIONS,
    ROW_PHRASES,
    ROWS,
    SHAPES,
    SIZES,
    WORDS,
    Scene,
    SceneObject,
    caption,
    edit,
    parse_caption,
    random_scene,
)
from .tasks import TASKS, TASKS_BY_NAME, WORD_QUESTION, TaskInfo, caption_scenes

__all__ = [
    "BACKGROUND", "COLORS", "COLOR_NAMES", "COUNT_WORDS", "GENERATOR", "IMAGE_TOKEN", "MAX_OBJECTS",
    "MUCO_QUESTION_ORDER", "PLURALS", "POSITIONS", "ROWS", "ROW_PHRASES", "SHAPES", "SIZES", "TASKS", "TASKS_BY_NAME",
    "TEXT_COLOR", "VERSION", "WORDS", "WORD_QUESTION", "Scene", "SceneObject", "SyntheticConfig", "TaskInfo",
    "caption", "caption_scenes", "cell_box", "edit", "generate", "muco_pairs", "parse_caption", "random_scene",
    "render",
]
