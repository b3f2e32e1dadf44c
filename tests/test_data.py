"""Training data: readers (file:line errors, image roots, skipping), collator, samplers."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmembed.data import synthetic as syn
from mmembed.data.dataset import to_dataset
from mmembed.data.formats import (
    READERS,
    DataError,
    read_mmeb_train,
    read_multiturn,
    read_pairs,
    read_sick_triplets,
    read_triplets,
)
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


def _parquet(path, columns):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path)
    return path


def test_multiturn_our_format_with_paraphrases(tmp_path, images):
    images[0].save(tmp_path / "a.png")
    f = _write(tmp_path / "mt.jsonl", [
        {"image": "a.png", "pairs": [
            {"kind": "vqa", "query": "<|image_1|>\nHow many circles are there?", "positive": "two"},
            {"query": ["Which shapes are in the image?", " Name the shapes. "], "positive": "circle and star"}]},
        "",
        {"image": None, "pairs": [{"query": "a text-only turn", "positive": "its answer", "kind": ""}]},
    ])
    assert READERS["multiturn"] is read_multiturn
    assert read_multiturn(f, image_root=tmp_path) == [
        {"image": str((tmp_path / "a.png").resolve()), "pairs": [
            {"query": ["How many circles are there?"], "positive": "two", "kind": "vqa"},
            {"query": ["Which shapes are in the image?", "Name the shapes."], "positive": "circle and star",
             "kind": None}]},
        {"image": None, "pairs": [{"query": ["a text-only turn"], "positive": "its answer", "kind": None}]},
    ]


def test_multiturn_m3t_parquet_and_configurable_columns(tmp_path, images):
    (tmp_path / "imgs").mkdir()
    images[0].save(tmp_path / "imgs" / "0.jpg")
    images[1].save(tmp_path / "imgs" / "1.jpg")
    a, b = str((tmp_path / "imgs" / "0.jpg").resolve()), str((tmp_path / "imgs" / "1.jpg").resolve())
    f = _parquet(tmp_path / "M3T.parquet", {
        "image_path": ["0.jpg", "1.jpg"],
        "qry": [[["<|image_1|>\nWhat is this?", "Classify the image."], ["Where is the dog?"]], [["Caption it."]]],
        "pos_text": [["a dog", "on the left"], ["a dog on grass"]],
        "url": ["http://x/0.jpg", "http://x/1.jpg"],  # other columns are ignored
    })
    assert read_multiturn(f, image_root=tmp_path / "imgs") == [
        {"image": a, "pairs": [{"query": ["What is this?", "Classify the image."], "positive": "a dog", "kind": None},
                               {"query": ["Where is the dog?"], "positive": "on the left", "kind": None}]},
        {"image": b, "pairs": [{"query": ["Caption it."], "positive": "a dog on grass", "kind": None}]},
    ]
    # stringified lists (as MuCo's meta files write them), kinds, and column names of our choosing
    f = _write(tmp_path / "renamed.jsonl", [
        {"img": "1.jpg", "questions": "[['What is it?', 'Name it.'], 'Where?']", "answers": "['a dog', 'left']",
         "task": ["classification", "grounding"]}])
    rows = read_multiturn(f, tmp_path / "imgs", columns={"image": "img", "queries": ["questions"],
                                                         "positives": "answers", "kinds": "task"})
    assert rows == [{"image": b, "pairs": [
        {"query": ["What is it?", "Name it."], "positive": "a dog", "kind": "classification"},
        {"query": ["Where?"], "positive": "left", "kind": "grounding"}]}]
    with pytest.raises(ValueError, match="unknown column role"):
        read_multiturn(f, tmp_path / "imgs", columns={"query": "questions"})
    with pytest.raises(DataError, match=r"renamed.jsonl:1: neither 'pairs' nor query / positive columns"):
        read_multiturn(f, tmp_path / "imgs")
    bad = _parquet(tmp_path / "bad.parquet", {"image": ["0.jpg", "1.jpg"], "queries": [["q1", "q2"], ["q1", "q2"]],
                                              "positives": [["p1", "p2"], ["p1"]]})
    with pytest.raises(DataError, match=r"bad.parquet:row 1: parallel lists of different lengths \(2 queries, "
                                        r"1 positives\)"):
        read_multiturn(bad, tmp_path / "imgs")


def test_multiturn_bad_records_name_file_and_line(tmp_path, images, caplog):
    images[0].save(tmp_path / "outside.png")
    (tmp_path / "root").mkdir()
    images[1].save(tmp_path / "root" / "ok.png")
    good = {"image": "ok.png", "pairs": [{"query": "q", "positive": "p"}]}
    cases = {
        "leaves the image root": [{"image": "../outside.png", "pairs": [{"query": "q", "positive": "p"}]}],
        "does not exist": [{"image": "missing.png", "pairs": [{"query": "q", "positive": "p"}]}],
        "no \\(query, positive\\) pairs": [{"image": "ok.png", "pairs": []}],
        "pairs\\[1\\]: empty positive": [{"image": "ok.png", "pairs": [{"query": "q", "positive": "p"},
                                                                          {"query": "q2", "positive": " <|image_1|> "}]}],
        "paraphrase 1 of the query is empty": [{"image": "ok.png", "pairs": [{"query": ["q", ""], "positive": "p"}]}],
        "a pair is an object with 'query' and 'positive'": [{"image": "ok.png", "pairs": [{"query": "q"}]}],
        "parallel lists of different lengths": [{"image": "ok.png", "queries": ["a", "b"], "positives": ["c"]}],
        "invalid JSON": ["{broken"],
    }
    for message, records in cases.items():
        f = _write(tmp_path / "bad.jsonl", [good, *records])
        with pytest.raises(DataError, match=rf"bad.jsonl:2.*{message}"):
            read_multiturn(f, image_root=tmp_path / "root")
    f = _write(tmp_path / "mixed.jsonl", [good, {"image": "../outside.png", "pairs": [{"query": "q", "positive": "p"}]},
                                          good, {"image": "ok.png", "pairs": []}])
    with caplog.at_level(logging.WARNING, logger="mmembed.data.formats"):
        rows = read_multiturn(f, image_root=tmp_path / "root", skip_bad=True)
    assert len(rows) == 2 and "skipped 2 bad records" in caplog.text and "mixed.jsonl:2" in caplog.text


def test_mmeb_train_with_captions_list_negatives_and_parquet(tmp_path, images):
    for k, name in enumerate(["q.png", "p.png", "n.png"]):
        images[k].save(tmp_path / name)
    q, p, n = (str((tmp_path / name).resolve()) for name in ["q.png", "p.png", "n.png"])
    records = [
        {"qry": "<|image_1|>\nFind an image caption describing the given image.", "qry_image_path": "q.png",
         "pos_text": "a cat on a mat", "pos_image_path": "", "neg_text": "['a dog', '<|image_1|> similar photo']",
         "neg_image_path": "['', 'n.png']", "qry_sentence": "A grey cat lies on a red mat.", "pos_sentence": None},
        {"qry": "Find me an everyday image that matches the given caption: a cat.", "qry_image_path": "",
         "pos_text": "<|image_1|>\nRepresent the given image.", "pos_image_path": "p.png",
         "neg_text": ["wrong text", "another one"], "neg_image_path": "", "qry_sentence": "",
         "pos_sentence": "  A cat.  "},
        {"qry": "plain", "qry_image_path": "", "pos_text": "old MMEB row", "pos_image_path": "", "neg_text": "",
         "neg_image_path": ""},
    ]
    expected = [
        {"anchor": {"text": "Find an image caption describing the given image.", "image": q,
                    "caption": "A grey cat lies on a red mat."},
         "positive": {"text": "a cat on a mat", "image": None, "caption": None},
         "negative": [{"text": "a dog", "image": None, "caption": None},
                      {"text": "similar photo", "image": n, "caption": None}]},
        {"anchor": {"text": "Find me an everyday image that matches the given caption: a cat.", "image": None,
                    "caption": None},
         "positive": {"text": "Represent the given image.", "image": p, "caption": "A cat."},
         "negative": [{"text": "wrong text", "image": None, "caption": None},
                      {"text": "another one", "image": None, "caption": None}]},
        {"anchor": {"text": "plain", "image": None, "caption": None},
         "positive": {"text": "old MMEB row", "image": None, "caption": None}},
    ]
    assert read_mmeb_train(_write(tmp_path / "m.jsonl", records), image_root=tmp_path) == expected
    columns = {key: [r.get(key) for r in records] for key in records[0]}
    columns["neg_text"] = [str(r["neg_text"]) for r in records]  # a parquet column has one type: all stringified
    parquet = _parquet(tmp_path / "MSCOCO_i2t_generated_sentence.parquet", columns)
    assert read_mmeb_train(parquet, image_root=tmp_path) == expected
    dataset = to_dataset(expected[:2])  # the caption key goes through datasets and the content keys ignore it
    assert dataset[0]["anchor"]["caption"] == "A grey cat lies on a red mat." and len(dataset[0]["keys"]) == 4
    bad = _write(tmp_path / "bad.jsonl", [records[2], {**records[0], "neg_image_path": "['n.png']"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: 2 neg_text but 1 neg_image_path"):
        read_mmeb_train(bad, image_root=tmp_path)
    bad = _parquet(tmp_path / "bad.parquet", {**columns, "qry_image_path": ["q.png", "../../escape.png", ""]})
    with pytest.raises(DataError, match=r"bad.parquet:row 1 qry: image path '../../escape.png' leaves the image"):
        read_mmeb_train(bad, image_root=tmp_path)
    assert len(read_mmeb_train(bad, image_root=tmp_path, skip_bad=True)) == 2


def test_synthetic_training_files_are_read_and_captions_describe_their_images(tmp_path):
    """Every caption the generator writes (MMEB-train ``qry_sentence`` / ``pos_sentence``, MuCo's retrieval turn)
    is the exact scene of its image: rendering the parsed caption gives the stored pixels up to the noise."""
    config = syn.SyntheticConfig(seed=1, image_size=48, n_eval_queries=1, n_candidates=2, n_train_per_task=4,
                                 n_muco_images=4, n_mbeir_queries=1)
    out = syn.generate(tmp_path / "syn", config)

    def shows(caption, image):
        clean = np.asarray(syn.render(syn.parse_caption(caption), config.image_size), dtype=int)
        return np.abs(np.asarray(Image.open(image), dtype=int) - clean).max() <= config.noise

    config = syn.SyntheticConfig(seed=1, image_size=48, n_eval_queries=1, n_candidates=2, n_train_per_task=4,
                                 n_muco_images=12, n_mbeir_queries=1)
    out = syn.generate(tmp_path / "syn", config)
    muco = [row for path in sorted((out / "muco").glob("*.jsonl")) for row in read_multiturn(path, image_root=out)]
    assert len(muco) == 12 and all(len(row["pairs"]) in (1, 3, config.k_turns) for row in muco)
    captions = [row for row in muco if len(row["pairs"]) == 1]  # caption packs (Caption-I2T)
    assert captions and all(row["pairs"][0]["kind"] == "retrieval" for row in captions)
    for row in captions:
        assert all(len(p["query"]) == 1 for p in row["pairs"])
        assert shows(row["pairs"][0]["positive"], row["image"])
    files = sorted((out / "mmeb_train").glob("*.jsonl"))
    assert len(files) == sum(t.distribution == "IND" for t in syn.TASKS)
    captioned = 0
    for path in files:
        for row in read_mmeb_train(path, image_root=out):
            assert [n["caption"] for n in row["negative"]] == [None]  # MuCo has no captions for negatives
            for side in [row["anchor"], row["positive"]]:
                assert (side["caption"] is None) == (side["image"] is None)
                if side["caption"] is not None:
                    assert shows(side["caption"], side["image"])
                    captioned += 1
    assert captioned == 4 * len(files)  # each training row has exactly one image side besides its negative


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
