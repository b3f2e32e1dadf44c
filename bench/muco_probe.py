"""Where MuCo's learning check loses the scene: linear probes on the tiny VLM's visual tokens and on its embeddings.

For each model folder, fresh synthetic scenes (``mmembed.synthetic``, 112 px, the learning check's size, seeded) are
encoded two ways and a logistic-regression probe is fitted on 1,000 and scored on 500 held-out scenes:

- **visual tokens**: the vision tower's output (``get_image_features``: the merged tokens the language model reads,
  flattened), before any language-model layer;
- **embedding**: the model's own embedding of the image with the Shape-Cls instruction (its saved template and
  pooler: MuCo's ``<|emb|>`` turn).

Labels: one-object scenes (shape 6-way, colour 6-way, grid cell 9-way) and 1-4-object scenes (number of objects).
High probe accuracy on visual tokens with a low one on the embedding means the language model / pooling drops what
the tower sees; low accuracy on both means the tower does not carry it.

    python bench/muco_probe.py out/muco/vl out/muco/vis6k/final [--scenes 1500]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

SIZE = 112
INSTRUCTION = "Represent the given image for shape classification"


def scenes(n: int, seed: int) -> tuple[list, dict[str, np.ndarray], list, np.ndarray]:
    """``n`` one-object scenes (images, labels shape / colour / cell) and ``n`` 1-4-object scenes (images, count)."""
    from mmembed.synthetic.drawing import render
    from mmembed.synthetic.scenes import COLOR_NAMES, SHAPES, random_scene

    rng = np.random.default_rng(seed)
    single = [random_scene(rng, n_objects=1, word_prob=0.25) for _ in range(n)]
    multi_counts = rng.integers(1, 5, size=n)
    multi = [random_scene(rng, n_objects=int(k), word_prob=0.25) for k in multi_counts]
    labels = {"shape": np.array([SHAPES.index(s.objects[0].shape) for s in single]),
              "colour": np.array([COLOR_NAMES.index(s.objects[0].color) for s in single]),
              "cell": np.array([s.objects[0].cell for s in single])}
    counts = np.array([len(s.objects) for s in multi])
    return ([render(s, SIZE, rng=rng) for s in single], labels, [render(s, SIZE, rng=rng) for s in multi], counts)


@torch.no_grad()
def visual_tokens(embedder, images: list) -> np.ndarray:
    """The vision tower's merged tokens of each image, flattened (the same grid for every image)."""
    from mmembed.lora import base_model

    model = base_model(embedder.backbone.model)
    processor = embedder.backbone.processor.image_processor
    out = []
    for start in range(0, len(images), 64):
        batch = processor(images=images[start:start + 64], return_tensors="pt")
        features = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
        out += [f.flatten().float().numpy() for f in features]
    return np.stack(out)


def embedding(embedder, images: list) -> np.ndarray:
    """The model's embedding of each image with the Shape-Cls instruction (one ``<|emb|>`` turn: one vector)."""
    vectors = embedder.encode([{"image": im, "text": INSTRUCTION} for im in images], batch_size=32)
    return np.stack([np.asarray(v).reshape(-1) for v in vectors])


def probe(features: np.ndarray, labels: np.ndarray, train: int) -> float:
    """Held-out accuracy x 100 of a standardised logistic-regression probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(features[:train], labels[:train])
    return round(100 * float(clf.score(features[train:], labels[train:])), 1)


def main() -> None:
    import mmembed

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--scenes", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    train = args.scenes * 2 // 3
    single, labels, multi, counts = scenes(args.scenes, args.seed)
    results = {}
    for folder in args.models:
        embedder = mmembed.load(folder, dtype="float32")
        row = {}
        for name, encode in (("visual tokens", visual_tokens), ("embedding", embedding)):
            one, many = encode(embedder, single), encode(embedder, multi)
            row[name] = {**{k: probe(one, v, train) for k, v in labels.items()}, "count": probe(many, counts, train)}
        results[folder] = row
        print(folder, json.dumps(row), flush=True)
    print("chance: shape 16.7, colour 16.7, cell 11.1, count 25.0")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
