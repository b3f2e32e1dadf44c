"""Training data: readers (file:line errors, image roots, skipping), collator, samplers."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmembed import synthetic as syn
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

    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "sick"
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


# --- every row the cards allow trains; every other row is refused with file:line ---------------------------------

GOOD = {"anchor": "a", "positive": "b", "negative": "c"}


@pytest.mark.parametrize("line, message", [
    ('{"anchor": {"text": 5}, "positive": "b"}', "bad.jsonl:2 anchor: 'text' must be a string, got int (5)"),
    ('{"anchor": "a", "positive": ["b1", "b2"]}', "bad.jsonl:2: 2 positives, but {path}:1 has 1; every row"),
    ('{"anchor": "a", "positive": []}', "bad.jsonl:2: 'positive' is empty"),
    ('{"anchor": "a", "positive": {"text": "b", "imge": "x.png"}}', "bad.jsonl:2 positive: unknown key(s) ['imge']"),
    ('{"anchor": "a", "positive": {"image_path": 3}}', "bad.jsonl:2 positive: the image path must be a string"),
    ('{"anchor": "bad \\ud800", "positive": "b"}', "bad.jsonl:2 anchor: 'text' holds '\\ud800', a lone surrogate"),
    ('{"anchor": "a", "positive": "b", "negative": [{"text": ["n"]}]}',
     "bad.jsonl:2 negative: 'text' must be a string, got list"),
    (b'{"anchor": "caf\xe9", "positive": "b"}', "bad.jsonl:2: not valid UTF-8 (byte 0xe9 at byte 16 of the line)"),
])
def test_every_bad_triplet_row_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    line = line if isinstance(line, bytes) else line.encode()
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n" + json.dumps(GOOD).encode() + b"\n")
    with pytest.raises(DataError) as error:
        read_triplets(path)
    assert str(error.value).startswith(f"{path}:2") and message.format(path=path) in str(error.value)
    assert len(read_triplets(path, skip_bad=True)) == 2  # the same row is a countable bad record


def test_other_readers_name_file_and_line(tmp_path):
    from mmembed.data.formats import read_grace, read_sentences

    cases = [
        (read_pairs, b'{"query": "q", "positive": "d"}\n{"query": {"text": 1.5}, "positive": "d"}\n',
         ":2 query: 'text' must be a string, got float"),
        (read_mmeb_train, b'{"qry": "q", "pos_text": "p"}\n{"qry": "\xff", "pos_text": "p"}\n', ":2: not valid UTF-8"),
        (read_multiturn, b'{"pairs": [{"query": "q", "positive": "p"}]}\n\xfe\n', ":2: not valid UTF-8 (byte 0xfe"),
        (read_grace, b'{"query": "q", "positive": "p"}\n{"query": "q", "positive": "p\\udc00"}\n',
         ":2: 'positive' holds '\\udc00', a lone surrogate"),
        (read_sentences, b"one sentence\n\ntwo \xc3\x28 sentences\n", ":3: not valid UTF-8 (byte 0xc3 at byte 5"),
        (read_grace, b'{"query": "q", "positive": "p"}\n{"query": "q", "positive": "p", "negative": "n"}\n',
         ":2: a 'negative', but {path}:1 has none; a GRACE file gives every row a negative or none."),
    ]
    for reader, data, message in cases:
        path = tmp_path / f"{reader.__name__}.jsonl"
        path.write_bytes(data)
        with pytest.raises(DataError) as error:
            reader(path)
        assert str(error.value).startswith(f"{path}{message.format(path=path)}"), str(error.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match=rf"{empty}: no sentences"):
        read_sentences(empty)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"query": "q", "positive": "d"}\r\n')  # a BOM and CRLF are fine
    assert read_pairs(bom) == [{"anchor": {"text": "q", "image": None}, "positive": {"text": "d", "image": None}}]


def test_sick_reader_refuses_bad_files_with_file_and_line(tmp_path):
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
    good = "1\tA man plays.\tA person plays.\t4.5\tENTAILMENT\n2\tA man plays.\tNobody plays.\t1.0\tCONTRADICTION\n"
    path = tmp_path / "SICK_train.txt"
    for text, message in [
        ("pair_ID\tsentence_A\tsentence_B\n" + good, ":1: the header lacks ['entailment_judgment']"),
        (header + good + "3\t \tB\t3.0\tNEUTRAL\n", ":4: empty sentence"),
        (header + good.replace("CONTRADICTION", "NEUTRAL"), ": no triplets"),
    ]:
        path.write_text(text)
        with pytest.raises(DataError) as error:
            read_sick_triplets(tmp_path)
        assert str(error.value).startswith(f"{path}{message}"), str(error.value)
    path.write_text(header + good)
    assert read_sick_triplets(path) == read_sick_triplets(tmp_path)  # the file itself, or its folder
    assert read_sick_triplets(path)[0]["negative"] == [{"text": "Nobody plays.", "image": None}]
    with pytest.raises(DataError, match="SICK_trial.txt does not exist"):
        read_sick_triplets(tmp_path, "trial")


def _mixed_rows(path):
    """Triplets with 2, 0, 1, 0 (absent), 0 (null) and 0 ([]) hard negatives: every row the card allows."""
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(40)]
    counts = [2, 0, 1, 0, 0, 0]
    records = []
    for i, k in enumerate(counts * 2):
        record = {"anchor": texts[3 * i], "positive": {"text": texts[3 * i + 1], "image_path": ""}}
        if k:
            record["negative"] = [texts[(3 * i + 2 + j) % 40] for j in range(k)] if k > 1 else texts[3 * i + 2]
        elif i % 6 == 4:
            record["negative"] = None
        elif i % 6 == 5:
            record["negative"] = []
        records.append(record)
    return _write(path, records)


def test_rows_without_hard_negatives_are_kept_through_the_dataset_and_collator(tmp_path, qwen2_path):
    import mmembed
    from mmembed.data.collator import ContrastiveCollator

    rows = read_triplets(_mixed_rows(tmp_path / "mixed.jsonl"))
    assert [len(r.get("negative", [])) for r in rows] == [2, 0, 1, 0, 0, 0] * 2
    dataset = to_dataset(rows[1:])  # the first row has no negative: later rows' negatives must not be dropped
    assert [len(n) for n in dataset["negative"]] == [0, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0]
    collator = ContrastiveCollator(mmembed.load(str(qwen2_path)).backbone)
    batch = collator([dataset[i] for i in range(6)])
    assert batch["negative"]["input_ids"].shape[0] == 3
    assert batch["negative_owners"].tolist() == [1, 5, 5]
    assert "negative_owners" not in collator([dataset[i] for i in range(2, 5)])
    assert "negative" not in collator([dataset[i] for i in (2, 3, 4)])


def test_rows_that_cannot_share_one_table_are_refused():
    side = {"text": "x", "image": None}
    with pytest.raises(DataError, match=r"training row 1 has 2 positive\(s\) but row 0 has 1; every row needs"):
        to_dataset([{"anchor": side, "positive": side}, {"anchor": side, "positive": [side, side]}])
    with pytest.raises(DataError, match=r"training row 1 has the fields \['anchor', 'positive', 'score'\] but row 0"):
        to_dataset([{"anchor": side, "positive": side}, {"anchor": side, "positive": side, "score": 1.0}])
    with pytest.raises(DataError, match="no training rows"):
        to_dataset([])


def test_rows_of_a_mixture_that_differ_are_named_by_file_and_line(tmp_path):
    """A mixture of files whose rows have different numbers of positives: the first row that differs is named by its
    file:line (the readers' rows keep it through slicing and joining), against the first row's."""
    from mmembed.data.formats import Rows
    from mmembed.data.readers import read_parts

    one = _write(tmp_path / "a.jsonl", [{"anchor": f"a{i}", "positive": f"p{i}"} for i in range(3)])
    (tmp_path / "b.jsonl").write_text('\n{"anchor": "b0", "positive": ["x", "y"]}\n')  # its row is on line 2
    parts = read_parts(f"{one},{tmp_path / 'b.jsonl'}", "triplets", max_rows=2)
    assert [p.where for p in parts] == [[f"{one}:1", f"{one}:2"], [f"{tmp_path / 'b.jsonl'}:2"]]
    with pytest.raises(DataError) as error:
        to_dataset(Rows.join(parts))
    assert str(error.value) == (f"{tmp_path / 'b.jsonl'}:2: the row has 2 positive(s) but {one}:1 has 1; every row "
                                f"needs the same number of positives (in a mixture of files too: the loss pairs each "
                                f"anchor with a block of that many).")
    assert Rows.join([[{"anchor": 1}], parts[0]]).where == [None, f"{one}:1", f"{one}:2"]


def test_info_nce_with_a_different_number_of_hard_negatives_per_row_matches_the_hand_formula():
    import torch
    import torch.nn.functional as F

    from mmembed.losses import InfoNCELoss

    torch.manual_seed(0)
    q, p, n = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    owners = torch.tensor([0, 0, 2])  # row 0: two hard negatives, row 1: none, row 2: one
    for weight in (0.0, 0.7):
        out = InfoNCELoss(temperature=0.05, hard_negative_weight=weight)(q, p, n, negative_owners=owners)
        candidates = [F.normalize(c, dim=0) for c in [*p, *n]]
        terms = []
        for i in range(3):
            logits = torch.stack([F.normalize(q[i], dim=0) @ c / 0.05 for c in candidates])
            own = [3 + j for j in range(3) if int(owners[j]) == i]
            logits[own] += weight
            terms.append(-logits.log_softmax(0)[i])
        assert torch.allclose(out["loss"], torch.stack(terms).mean(), atol=1e-5)
    uniform = InfoNCELoss(temperature=0.05, hard_negative_weight=0.7)
    n6 = torch.randn(6, 8)  # owners [0, 0, 1, 1, 2, 2] are what "2 per row" means
    assert torch.equal(uniform(q, p, n6)["loss"], uniform(q, p, n6, negative_owners=torch.arange(6) // 2)["loss"])
    with pytest.raises(ValueError, match="give each of the 3 hard negatives the index of its query in \\[0, 3\\)"):
        uniform(q, p, n, negative_owners=torch.tensor([0, 3, 1]))


def _mixed_loss(path, **kwargs):
    from support import loss_with_lora

    from mmembed.inputs import PromptTemplate
    from mmembed.losses import InfoNCELoss

    loss = loss_with_lora(path, PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True),
                           **kwargs)
    loss.info_nce = InfoNCELoss(temperature=0.05, hard_negative_weight=0.5)
    loss.model.backbone.model.eval()  # no dropout: runs in several processes compare exactly
    return loss


def test_a_mixed_batch_equals_the_reference_and_gradient_caching(qwen2_path, tmp_path):
    import torch
    import torch.nn.functional as F
    from support import assert_same_step, grads_of

    from mmembed.data.collator import ContrastiveCollator

    rows = to_dataset(read_triplets(_mixed_rows(tmp_path / "mixed.jsonl")))
    rows = [rows[i] for i in range(6)]
    loss = _mixed_loss(qwen2_path)
    batch = ContrastiveCollator(loss.model.backbone)(rows)
    with torch.no_grad():
        out = loss(**batch)
        q, p, n = (F.normalize(loss.embed(batch[c]), dim=-1) for c in ("anchor", "positive", "negative"))
    owners = [0, 0, 2]  # rows 0 (two), 2 (one); rows 1, 3, 4, 5 have none
    terms = []
    for i in range(6):
        logits = torch.cat([p, n]) @ q[i] / 0.05
        logits[[6 + j for j, owner in enumerate(owners) if owner == i]] += 0.5
        terms.append(-logits.log_softmax(0)[i])
    assert torch.allclose(out["loss"], torch.stack(terms).mean(), atol=1e-5)
    assert_same_step(grads_of(_mixed_loss(qwen2_path, mini_batch_size=2), batch), grads_of(loss, batch))


ORDER = [3, 4, 5, 0, 1, 2]  # the global batch: rows without hard negatives (rank 0), then 2, 0, 1 (rank 1)


def _mixed_worker(rank: int, world: int, port: int, path: str, data: str, out: str) -> None:
    import gc
    import os

    import torch.distributed as dist
    from support import save_mean_step

    from mmembed.data.collator import ContrastiveCollator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss = _mixed_loss(path)
        dataset = to_dataset(read_triplets(data))
        rows = [dataset[i] for i in ORDER[3 * rank: 3 * rank + 3]]  # rank 0's rows have no hard negative
        result = loss(**ContrastiveCollator(loss.model.backbone)(rows))
        save_mean_step(loss, result["loss"], rank, world, out)
    finally:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def test_two_processes_one_without_hard_negatives_equal_one_process(qwen2_path, tmp_path):
    import torch
    import torch.multiprocessing as mp
    from support import free_port

    from mmembed.data.collator import ContrastiveCollator

    data = _mixed_rows(tmp_path / "mixed.jsonl")
    out = tmp_path / "rank0.pt"
    mp.start_processes(_mixed_worker, args=(2, free_port(), str(qwen2_path), str(data), str(out)), nprocs=2,
                       start_method="spawn", join=True)
    distributed = torch.load(out)
    single = _mixed_loss(qwen2_path)
    dataset = to_dataset(read_triplets(data))
    result = single(**ContrastiveCollator(single.model.backbone)([dataset[i] for i in ORDER]))
    result["loss"].backward()
    assert torch.allclose(distributed["loss"], result["loss"].detach(), rtol=1e-5)
    grads = {n: p.grad for n, p in single.named_parameters() if p.grad is not None}
    assert grads.keys() == distributed["grads"].keys()
    for name, g in grads.items():
        assert (distributed["grads"][name] - g).norm() / g.norm().clamp(min=1e-12) < 1e-5, name


def test_a_triplet_file_with_rows_without_negatives_trains(qwen2_path, tmp_path):
    from mmembed.train.arguments import ContrastiveTrainingArguments, DataArguments, ModelArguments
    from mmembed.train.methods.contrastive import build_trainer

    data = _mixed_rows(tmp_path / "mixed.jsonl")
    args = ContrastiveTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3,
                                        learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0,
                                        disable_tqdm=True, temperature=0.05, report_to=[])
    trainer = build_trainer(ModelArguments(model_name_or_path=str(qwen2_path), lora_r=4, lora_alpha=8),
                            DataArguments(train_file=str(data), train_format="triplets"), args)
    assert len(trainer.train_dataset) == 12  # no row dropped
    negatives = [int(batch["negative"]["input_ids"].shape[0]) if "negative" in batch else 0
                 for batch in trainer.get_train_dataloader()]
    assert sum(negatives) == 6  # every hard negative of the file is in some batch
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 3 and len(losses) == 3 and all(np.isfinite(losses))


def test_muco_finetuning_takes_rows_without_hard_negatives(qwen2_emb_path):
    import torch

    import mmembed
    from mmembed.data.multiturn import EMB_TOKEN, AuxiliaryCollator
    from mmembed.losses import AuxiliaryContrastiveLoss, InfoNCELoss

    model = mmembed.load(str(qwen2_emb_path), dtype="float32", pooling={"mode": "special_token", "token": EMB_TOKEN})
    side = {"image": None, "caption": None}
    rows = [{"anchor": {"text": f"query {i}", **side}, "positive": {"text": f"answer {i}", **side},
             "negative": [{"text": f"wrong answer {i}.{j}", **side} for j in range(k)]} for i, k in enumerate([1, 0, 2])]
    batch = AuxiliaryCollator(model.backbone, seed=0)(rows)
    assert batch["negative_owners"].tolist() == [0, 2, 2]
    loss = AuxiliaryContrastiveLoss(model, InfoNCELoss(temperature=0.02, hard_negative_weight=0.3))
    with torch.no_grad():
        out = loss(**batch)
        (q, _), (p, _), (n, _) = (model(batch[c]) for c in ("anchor", "positive", "negative"))
        info = InfoNCELoss(temperature=0.02, hard_negative_weight=0.3)
        keys = {k: batch[k] for k in ("query_keys", "positive_keys", "negative_keys", "negative_owners")}
        terms = [info(a, b, n, **keys)["loss"] for a in (q[0::2], q[1::2]) for b in (p[0::2], p[1::2])]
    assert float(out["loss"]) == pytest.approx(float(sum(terms)), abs=1e-5)
