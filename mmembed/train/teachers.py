"""Teachers for distillation (DSE): models that score text pairs with cosine-like values in ``[-1, 1]``.

- :class:`EmbedderTeacher`: the cosine of an embedding model's embeddings (any model ``mmembed.load`` reads: a
  trained mmembed folder, a sentence-transformers folder such as all-mpnet-base-v2, an LLM folder);
- :class:`CrossEncoderTeacher`: a ``sentence_transformers.CrossEncoder`` folder with one output, its logit passed
  through a sigmoid (``[0, 1]``);
- :func:`load_teacher` picks one from a folder's ``config.json``.

Each is a :class:`~mmembed.data.teacher_scores.Teacher`: its scores are cached, read and checked by
:mod:`mmembed.data.teacher_scores` (precomputed files need no teacher at all). See ``data_cards/teacher_scores.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.teacher_scores import Teacher
from ..defaults import OFFLINE_MODELS, offline_model_path

TEACHER_KINDS = ("auto", "embedder", "cross_encoder")


class EmbedderTeacher:
    """Cosine of an embedding model's (L2-normalised) embeddings of the two texts.

    Args:
        model: an :class:`~mmembed.embedder.Embedder`, or a path / offline model name for ``mmembed.load``.
        name: the cache name (default ``"embedder:<model>"``).
        batch_size: encoding batch size.
        device: where a model loaded from a path runs.
    """

    def __init__(self, model: Any, name: str | None = None, batch_size: int = 64, device: str = "cpu") -> None:
        if isinstance(model, (str, Path)):
            import mmembed

            self.name = name or f"embedder:{model}"
            model = mmembed.load(offline_model_path(str(model)), device=device)
        else:
            if name is None:
                raise ValueError("give an in-memory teacher model a name (it keys the cache).")
            self.name = name
        self.model = model.eval() if hasattr(model, "eval") else model
        self.batch_size = batch_size

    def score(self, anchors: Sequence[str], positives: Sequence[str]) -> list[float]:
        from ..eval.encoding import EmbeddingCache

        cache = EmbeddingCache(self.model, None, batch_size=self.batch_size)
        cache.get(list(anchors) + list(positives))  # every distinct text encoded once
        return [float(x) for x in (cache.get(list(anchors)) * cache.get(list(positives))).sum(1)]


class CrossEncoderTeacher:
    """A ``sentence_transformers.CrossEncoder`` with one output; the score is ``sigmoid(logit)`` in ``[0, 1]``.

    Args:
        model: a CrossEncoder folder (or an offline model name).
        name: the cache name (default ``"cross_encoder:<model>"``).
        batch_size: pairs per forward pass.
        device: where it runs.
        max_length: truncate pairs to this many tokens (default: the model's).
    """

    def __init__(self, model: str | Path, name: str | None = None, batch_size: int = 64, device: str = "cpu",
                 max_length: int | None = None) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        self.name = name or f"cross_encoder:{model}"
        self.model = CrossEncoder(offline_model_path(str(model)), device=device, max_length=max_length)
        if self.model.num_labels != 1:
            raise ValueError(f"cross-encoder {model} has {self.model.num_labels} outputs; a teacher gives one score "
                             f"per pair (num_labels=1).")
        self.batch_size = batch_size
        self._sigmoid = torch.nn.Sigmoid()

    def score(self, anchors: Sequence[str], positives: Sequence[str]) -> list[float]:
        values = self.model.predict(list(zip(anchors, positives)), batch_size=self.batch_size,
                                    activation_fn=self._sigmoid, show_progress_bar=False)
        return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def teacher_kind(model: str) -> str:
    """``"cross_encoder"`` for a folder whose ``config.json`` names a sequence-classification architecture, else
    ``"embedder"`` (read without loading any weights)."""
    if model in OFFLINE_MODELS:
        return "embedder"
    config = Path(model) / "config.json"
    if config.is_file():
        try:
            architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        except (json.JSONDecodeError, AttributeError):
            architectures = []
        if any(str(a).endswith("ForSequenceClassification") for a in architectures):
            return "cross_encoder"
    return "embedder"


def teacher_name(model: str, kind: str = "auto") -> str:
    """The default cache name of a teacher: ``"<kind>:<model as given>"``."""
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher kind {kind!r}: choose one of {TEACHER_KINDS}.")
    return f"{teacher_kind(model) if kind == 'auto' else kind}:{model}"


def load_teacher(model: str, kind: str = "auto", name: str | None = None, batch_size: int = 64,
                 device: str = "cpu") -> Teacher:
    """A teacher from a path or offline model name: a cross-encoder or an embedding model (``kind="auto"``: by
    the folder's ``config.json``, see :func:`teacher_kind`)."""
    name = name or teacher_name(model, kind)
    resolved = teacher_kind(model) if kind == "auto" else kind
    if resolved == "cross_encoder":
        return CrossEncoderTeacher(model, name=name, batch_size=batch_size, device=device)
    return EmbedderTeacher(model, name=name, batch_size=batch_size, device=device)
