"""Training data: readers (file:line errors, image roots, skipping), collator, samplers."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mmembed.data.dataset import to_dataset
from mmembed.data.formats import DataError, read_mmeb_train, read_pairs, read_sick_triplets, read_triplets
from mmembed.data.samplers import DatasetMixtureBatchSampler, NoDuplicatesBatchSampler


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_triplets_with_images_inside_the_root(tmp_path, images):
    (tmp_path / "img").mkdir()
    images[0].save(tmp_path / "img" / "a.png")
    f = _write(tmp_path / "t.jsonl", [
        {"anchor": {"text": "q", "image_path": ""}, "positive": {"text": "", "image_path": "a.png"},
         "negative": {"text": "n", "image_path": ""}},
        {"anchor": "plain text", "positive": "other", "negative": ["n1", "n2"]},
    ])
    rows = read_triplets(f, image_root=tmp_path / "img")
    assert rows[0]["positive"] == {"text": None, "image": str((tmp_path / "img" / "a.png").resolve())}
    assert rows[0]["negative"] == [{"text": "n", "image": None}]
    assert [n["text"] for n in rows[1]["negative"]] == ["n1", "n2"]


def test_bad_records_name_file_and_line(tmp_path, images):
    images[0].save(tmp_path / "outside.png")
    (tmp_path / "root").mkdir()
    good = {"anchor": "a", "positive": "b"}
    cases = {
        "invalid JSON": ["{broken"],
        "missing \\['positive'\\]": [{"anchor": "a"}],
        "neither text nor image": [{"anchor": {"text": ""}, "positive": "b"}],
        "leaves the image root": [{"anchor": {"image_path": "../outside.png"}, "positive": "b"}],
        "does not exist": [{"anchor": {"image_path": "missing.png"}, "positive": "b"}],
    }
    for message, records in cases.items():
        f = _write(tmp_path / "bad.jsonl", [good, *records])
        with pytest.raises(DataError, match=rf"bad.jsonl:2.*{message}"):
            read_triplets(f, image_root=tmp_path / "root")
    f = _write(tmp_path / "mixed.jsonl", [good, "{broken", good])
    assert len(read_triplets(f, skip_bad=True)) == 2


def test_pairs_and_mmeb_rows(tmp_path, images):
    images[0].save(tmp_path / "q.png")
    pairs = read_pairs(_write(tmp_path / "p.jsonl", [{"query": "q", "document": "d"}]))
    assert pairs == [{"anchor": {"text": "q", "image": None}, "positive": {"text": "d", "image": None}}]
    mmeb = read_mmeb_train(_write(tmp_path / "m.jsonl", [
        {"qry": "<|image_1|>\nRepresent the given image for classification.", "qry_image_path": "q.png",
         "pos_text": "cat", "pos_image_path": ""}]), image_root=tmp_path)
    assert mmeb[0]["anchor"]["text"] == "Represent the given image for classification."
    assert mmeb[0]["anchor"]["image"].endswith("q.png") and "negative" not in mmeb[0]


def test_sick_triplets_follow_the_entailment_and_contradiction_labels():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "sick"
    if not folder.is_dir():
        pytest.skip("needs ../shared/data/sick")
    rows = read_sick_triplets(folder)
    assert len(rows) == 506
    lines = [line.split("\t") for line in (folder / "SICK_train.txt").read_text().splitlines()[1:]]
    label = {frozenset((a, b)): j for _, a, b, _, j in lines}
    for row in rows[:50]:
        a, p, n = row["anchor"]["text"], row["positive"]["text"], row["negative"][0]["text"]
        assert label[frozenset((a, p))] == "ENTAILMENT" and label[frozenset((a, n))] == "CONTRADICTION"


def test_no_duplicates_sampler_is_deterministic_and_duplicate_free():
    rows = [{"anchor": {"text": f"a{i % 5}", "image": None}, "positive": {"text": f"p{i}", "image": None}}
            for i in range(40)]
    keys = to_dataset(rows)["keys"]
    sampler = NoDuplicatesBatchSampler(keys, batch_size=4, seed=3)
    batches = list(sampler)
    assert batches and all(len(b) == 4 for b in batches)
    for batch in batches:
        anchors = [rows[i]["anchor"]["text"] for i in batch]
        assert len(set(anchors)) == len(anchors)
    assert batches == list(NoDuplicatesBatchSampler(keys, batch_size=4, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_mixture_sampler_draws_each_batch_from_one_dataset_by_weight():
    sampler = DatasetMixtureBatchSampler([100, 300], batch_size=10, weights=[1, 3], seed=0)
    batches = list(sampler)
    assert len(batches) == 40
    sources = Counter()
    for batch in batches:
        origin = {0 if i < 100 else 1 for i in batch}
        assert len(origin) == 1 and len(batch) == 10
        sources[origin.pop()] += 1
    assert 4 <= sources[0] <= 17 and sources[0] + sources[1] == 40
    assert batches == list(DatasetMixtureBatchSampler([100, 300], batch_size=10, weights=[1, 3], seed=0))
