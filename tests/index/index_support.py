"""Corpora for the index tests: distinct, deterministic sentences written as JSON lines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

WORDS = ["red", "green", "blue", "small", "large", "quick", "lazy", "bright", "dark", "old", "new", "silent", "loud",
         "warm", "cold", "happy", "sad", "cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "house",
         "road", "ship", "train", "garden", "city", "forest", "mountain", "runs", "sleeps", "sings", "flies",
         "swims", "grows", "falls", "shines", "waits", "jumps"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of 3 to 12 words (the number keeps them distinct)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 11))) + f" {i}" for i in range(n)]


def write_corpus(path: Path, n: int, seed: int = 0, prefix: str = "doc") -> Path:
    """A corpus of ``n`` records ``{"id": "<prefix>-<group>-<i>", "text": ...}`` (groups a, b, c)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(sentences(n, seed)):
            f.write(json.dumps({"id": f"{prefix}-{'abc'[i % 3]}-{i}", "text": text}) + "\n")
    return path


def shard_contents(folder: Path) -> dict[str, object]:
    """Every shard of an index folder: ``{name: (ids, vectors)}``, plus its manifest under ``"manifest"``."""
    out: dict[str, object] = {"manifest": json.loads((folder / "manifest.json").read_text())}
    for vectors in sorted(folder.glob("shard-*.npy")):
        name = vectors.name.removesuffix(".npy")
        out[name] = (json.loads((folder / f"{name}.ids.json").read_text()), np.load(vectors))
    return out


def assert_same_index(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Two index folders hold the same manifest, shard files, ids and vectors (to ``atol``)."""
    left, right = shard_contents(a), shard_contents(b)
    assert left.keys() == right.keys() and len(left) > 1
    assert left["manifest"] == right["manifest"]
    for name in left.keys() - {"manifest"}:
        (ids_a, vec_a), (ids_b, vec_b) = left[name], right[name]
        assert ids_a == ids_b
        assert vec_a.dtype == vec_b.dtype and vec_a.shape == vec_b.shape
        np.testing.assert_allclose(vec_a, vec_b, atol=atol, rtol=0)
