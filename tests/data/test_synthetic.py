"""The synthetic benchmark (mmembed.synthetic): determinism, formats, and that every task is learnable from
the image while a text-only guess stays at chance."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmembed import cli
from mmembed import synthetic as syn
from mmembed.data.formats import read_mmeb_train
from mmembed.errors import OutputPathError

CONFIG = syn.SyntheticConfig(seed=3, image_size=56, n_eval_queries=12, n_candidates=8, n_train_per_task=10,
                             n_muco_images=40, n_mbeir_queries=8)
IMAGE_TOKEN = "<|image_1|>"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("synthetic"), CONFIG)


@pytest.fixture(scope="module")
def eval_rows(out) -> dict[str, list[dict]]:
    return {task.name: _jsonl(out / "mmeb_eval" / f"{task.name}.jsonl") for task in syn.TASKS}


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------- scene building blocks


def test_caption_round_trip_and_edits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = syn.random_scene(rng)
        text = syn.caption(scene)
        assert syn.parse_caption(text) == scene
        edited, instruction = syn.edit(scene, rng)
        assert edited != scene and syn.caption(edited) != text and instruction
    scene = syn.Scene((syn.SceneObject("square", "blue", "large", 8), syn.SceneObject("circle", "red", "small", 3),
                       syn.SceneObject("circle", "red", "small", 4)), "apple", 0)
    assert syn.caption(scene) == ("two small red circles at the left and the center, a large blue square at the "
                                  "bottom right; the word 'apple' is written at the top")
    assert syn.parse_caption(syn.caption(scene)) == scene
    with pytest.raises(ValueError):
        syn.parse_caption("a small red circle somewhere")
    with pytest.raises(ValueError):  # an object in the word's row
        syn.Scene((syn.SceneObject("star", "green", "large", 1),), "apple", 0)


def test_render_is_deterministic_and_noise_is_mild():
    scene = syn.Scene((syn.SceneObject("star", "yellow", "large", 4),), "tiger", 0)
    a = np.asarray(syn.render(scene, 64, rng=np.random.default_rng(1)), dtype=int)
    b = np.asarray(syn.render(scene, 64, rng=np.random.default_rng(1)), dtype=int)
    clean = np.asarray(syn.render(scene, 64), dtype=int)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert 0 < np.abs(a - clean).max() <= CONFIG.noise
    assert (clean == syn.TEXT_COLOR).all(axis=-1).sum() > 50  # the word is drawn, in its own colour


# ----------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_files_other_seed_differs(out, tmp_path):
    first = _manifest(out)
    assert first["generator"] == syn.GENERATOR and first["version"] == syn.VERSION == "1.5"
    again = _manifest(syn.generate(tmp_path / "again", CONFIG))
    assert again["files"] == first["files"] and again["images"] == first["images"]
    for rel, digest in first["files"].items():  # the manifest records the real file hashes
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    assert syn.generate(tmp_path / "again", CONFIG) == tmp_path / "again"  # regenerating in place is idempotent
    assert _manifest(tmp_path / "again") == first
    other = _manifest(syn.generate(tmp_path / "other", syn.SyntheticConfig(**{**first["config"], "seed": 4})))
    assert other["files"].keys() == first["files"].keys()
    changed = [rel for rel in first["files"] if other["files"][rel] != first["files"][rel]]
    # every file holding query / candidate texts changes (M-BEIR image pools and qrels only list paths and ids)
    assert {rel for rel in first["files"] if rel.startswith(("mmeb_eval/", "mmeb_train/", "muco/"))
            and rel.endswith(".jsonl")} <= set(changed)
    assert "mbeir/query/test/mbeir_shapes_task0_test.jsonl" in changed
    assert other["images"]["pixels_sha256"] != first["images"]["pixels_sha256"]


def test_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    message = (f"'{tmp_path}' is not empty and holds no synthetic-data manifest (mmembed synthetic did not write it): "
               f"give a new or empty folder.")
    with pytest.raises(OutputPathError) as caught:
        syn.generate(tmp_path, CONFIG)
    assert str(caught.value) == message
    assert cli.main(["synthetic", "-o", str(tmp_path)]) == 2  # one line, no traceback
    assert capsys.readouterr().err == f"mmembed: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_config_is_validated():
    with pytest.raises(ValueError, match="k_turns"):
        syn.SyntheticConfig(k_turns=9)


# --------------------------------------------------------------------------------------------- MMEB format


def test_mmeb_eval_rows_are_well_formed(out, eval_rows):
    yaml = pytest.importorskip("yaml")
    listed = yaml.safe_load((out / "mmeb_eval" / "tasks.yaml").read_text())["tasks"]
    assert sorted(t["name"] + ".jsonl" for t in listed) == sorted(p.name for p in (out / "mmeb_eval").glob("*.jsonl"))
    assert {t["meta_task"] for t in listed} == {"classification", "vqa", "retrieval", "grounding"}
    assert {t["distribution"] for t in listed} == {"IND", "OOD"}
    counts = Counter(t["meta_task"] for t in listed)
    assert counts["classification"] >= 2 and counts["vqa"] >= 3 and counts["retrieval"] >= 2
    keys = {"qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"}
    for task in syn.TASKS:
        rows = eval_rows[task.name]
        assert len(rows) == CONFIG.n_eval_queries
        for row in rows:
            assert set(row) == keys
            assert len(row["tgt_text"]) == len(row["tgt_img_path"]) == task.n_candidates(CONFIG)
            assert row["qry_text"].startswith(IMAGE_TOKEN + "\n") == bool(row["qry_img_path"])
            assert row["qry_text"].endswith("\n") and row["qry_inst"] in row["qry_text"]
            for text, image in zip(row["tgt_text"], row["tgt_img_path"]):
                assert text.startswith(IMAGE_TOKEN + "\n") == bool(image)
                if image:
                    assert text == f"{IMAGE_TOKEN}\n{row['tgt_inst']}\n"
            for rel in [row["qry_img_path"], *row["tgt_img_path"]]:
                if rel:
                    assert not Path(rel).is_absolute() and (out / rel).is_file()
            # no two candidates are the same (the gold one is never duplicated among the distractors)
            candidates = [t + "|" + i for t, i in zip(row["tgt_text"], row["tgt_img_path"])]
            assert len(set(candidates)) == len(candidates)
            if task.labels:
                assert set(row["tgt_text"]) <= set(task.labels)


# ----------------------------------------------------------------------- text-only baselines are at chance


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower().replace(IMAGE_TOKEN, " ")))


def _expected_hit(scores: list[float]) -> float:
    """Expected hit@1 of picking the best score with ties broken at random (the gold candidate is the first)."""
    best = [i for i, x in enumerate(scores) if x == max(scores)]
    return 1 / len(best) if 0 in best else 0.0


def test_text_only_baselines_are_at_chance(eval_rows):
    """Word overlap between the query text and each candidate, ties broken at random: its EXPECTED accuracy
    (1/|tied| when the gold candidate is among the best) equals chance exactly, because no query word ever
    appears in one candidate and not in the others. And the gold labels are balanced (each label n//L or n//L + 1
    times), so "always answer the most frequent gold" gets at most ceil(n/L)/n."""
    for task in syn.TASKS:
        rows = eval_rows[task.name]
        expected = 0.0
        for row in rows:
            query = _words(row["qry_text"])
            expected += _expected_hit([len(query & _words(text)) for text in row["tgt_text"]])
            if task.labels:  # the answer never appears in the query text
                assert not re.search(rf"\b{re.escape(row['tgt_text'][0])}\b", row["qry_text"].lower())
        assert expected / len(rows) == pytest.approx(task.chance(CONFIG), abs=1e-9), task.name
        if task.labels:
            golds = Counter(row["tgt_text"][0] for row in rows)
            frequencies = [golds.get(label, 0) for label in task.labels]
            assert max(frequencies) - min(frequencies) <= 1, task.name
            assert max(frequencies) / len(rows) <= math.ceil(len(rows) / len(task.labels)) / len(rows)


def test_retrieval_gold_is_not_special_among_its_candidates():
    """The retrieval candidates are distinct single edits of a hidden scene, and the gold one is drawn uniformly
    among them (drawing distinct edits favours likely edits such as "erase the word" in the first draws, which the
    shuffle undoes): candidates-only heuristics, the shortest caption or the caption most similar to the others,
    are at chance (expected accuracy, ties shared)."""
    rng = np.random.default_rng(0)
    n, k = 1200, 8
    hits = {"shortest": 0.0, "central": 0.0}
    for _ in range(n):
        captions = [syn.caption(s) for s in syn.caption_scenes(rng, k)]
        words = [Counter(c.split()) for c in captions]
        hits["shortest"] += _expected_hit([-len(c) for c in captions])
        hits["central"] += _expected_hit([sum(sum((w & v).values()) for v in words) for w in words])
    # chance 1/8; binomial standard error over 1200 queries ~ 0.0095: 3 standard errors (without the shuffle the
    # shortest caption scores ~ 0.166)
    for name, total in hits.items():
        assert abs(total / n - 1 / k) < 0.029, (name, total / n)


# -------------------------------------------------------------------------- a pixel reader answers everything


_PALETTE = np.array([syn.BACKGROUND, syn.TEXT_COLOR, *syn.COLORS.values()], dtype=np.int32)


def _labels(image: Image.Image) -> np.ndarray:
    """Each pixel's nearest palette entry: 0 background, 1 text, 2 + k the k-th colour."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    return ((pixels[:, :, None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)


@functools.cache
def _object_mask(shape: str, size: str, cell: int, image_size: int) -> np.ndarray:
    scene = syn.Scene((syn.SceneObject(shape, "red", size, cell),))
    return _labels(syn.render(scene, image_size)) == 2 + syn.COLOR_NAMES.index("red")


@functools.cache
def _text_mask(word: str, row: int, image_size: int) -> np.ndarray:
    return _labels(syn.render(syn.Scene((), word, row), image_size)) == 1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


def read_scene(image: Image.Image) -> syn.Scene:
    """Analysis by synthesis: per cell, the dominant colour, then the (shape, size) whose clean rendering best
    overlaps the pixels of that colour; the word by the best-overlapping rendered word and row."""
    size = image.size[0]
    labels = _labels(image)
    objects = []
    for cell in range(9):
        x0, y0, x1, y1 = syn.cell_box(cell, size)
        counts = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=len(_PALETTE))[2:]
        if counts.max() < 3:
            continue
        color = int(counts.argmax())
        observed = (labels == 2 + color)[y0:y1, x0:x1]
        shape, obj_size = max(((s, z) for s in syn.SHAPES for z in syn.SIZES),
                              key=lambda sz: _iou(observed, _object_mask(*sz, cell, size)[y0:y1, x0:x1]))
        objects.append(syn.SceneObject(shape, syn.COLOR_NAMES[color], obj_size, cell))
    text = labels == 1
    if text.sum() < 10:
        return syn.Scene(tuple(objects))
    word, row = max(((w, r) for w in syn.WORDS for r in range(3)), key=lambda wr: _iou(text, _text_mask(*wr, size)))
    return syn.Scene(tuple(objects), word, row)


def _singular(noun: str) -> str:
    return next(s for s, p in syn.PLURALS.items() if p == noun)


def _oracle(task: str, row: dict, out: Path) -> int:
    """Index of the candidate a reader of the pixels picks."""
    image = Image.open(out / row["qry_img_path"]) if row["qry_img_path"] else None
    question = row["qry_text"].split(": ", 1)[-1].strip()
    texts = row["tgt_text"]
    if task == "Color-Cls":  # the dominant non-background colour
        counts = np.bincount(_labels(image).ravel(), minlength=len(_PALETTE))[2:]
        return texts.index(syn.COLOR_NAMES[int(counts.argmax())])
    if task == "Caption-T2I":  # render the caption, nearest candidate in pixels
        clean = np.asarray(syn.render(syn.parse_caption(question), CONFIG.image_size), dtype=np.int32)
        distances = [np.abs(np.asarray(Image.open(out / p), dtype=np.int32) - clean).sum()
                     for p in row["tgt_img_path"]]
        return int(np.argmin(distances))
    scene = read_scene(image)
    if task == "Shape-Cls":
        return texts.index(scene.objects[0].shape)
    if task == "Count-VQA":
        shape = _singular(re.fullmatch(r"How many (\w+) are there\?", question).group(1))
        return texts.index(syn.COUNT_WORDS[sum(o.shape == shape for o in scene.objects)])
    if task == "Color-VQA":
        shape = re.fullmatch(r"What color is the (\w+)\?", question).group(1)
        return texts.index(next(o.color for o in scene.objects if o.shape == shape))
    if task == "Word-VQA":
        return texts.index(scene.word)
    if task == "Position-VQA":
        name = re.fullmatch(r"Where is the (\w+ \w+)\?", question).group(1)
        return texts.index(next(syn.POSITIONS[o.cell] for o in scene.objects if o.name == name))
    if task == "Caption-I2T":
        return texts.index(syn.caption(scene))
    if task == "Object-Grounding":  # the crop of the cell holding the named object, compared pixel for pixel
        name = question.removeprefix("the ")
        cell = next(o.cell for o in scene.objects if o.name == name)
        crop = np.asarray(image.crop(syn.cell_box(cell, image.size[0])))
        return next(i for i, p in enumerate(row["tgt_img_path"]) if np.array_equal(np.asarray(Image.open(out / p)),
                                                                                   crop))
    raise AssertionError(task)


def test_a_pixel_reader_is_far_above_chance(out, eval_rows):
    for task in syn.TASKS:
        rows = eval_rows[task.name]
        accuracy = np.mean([_oracle(task.name, row, out) == 0 for row in rows])
        assert task.chance(CONFIG) <= 1 / 4
        assert accuracy >= 0.9, (task.name, accuracy)


def test_the_pixel_reader_recovers_training_scenes(out):
    """MuCo's retrieval turn holds the full caption: the image shows exactly that scene."""
    for line in _jsonl(out / "muco" / "caption.jsonl"):
        caption = next((p["positive"] for p in line["pairs"] if p["kind"] == "retrieval"), None)
        if caption is not None:
            assert syn.caption(read_scene(Image.open(out / line["image"]))) == caption


# ----------------------------------------------------------------------------------------- training formats


def _pixels(path: Path) -> str:
    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


def test_mmeb_train_is_read_by_the_reader_and_disjoint_from_eval(out, eval_rows):
    ind = {t.name for t in syn.TASKS if t.distribution == "IND"}
    assert {p.stem for p in (out / "mmeb_train").glob("*.jsonl")} == ind
    assert ind and ind != {t.name for t in syn.TASKS}
    train_images = set()
    for name in sorted(ind):
        raw = _jsonl(out / "mmeb_train" / f"{name}.jsonl")
        rows = read_mmeb_train(out / "mmeb_train" / f"{name}.jsonl", image_root=out)
        assert len(rows) == len(raw) == CONFIG.n_train_per_task
        for record, row in zip(raw, rows):
            assert list(record) == ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text",
                                    "neg_image_path", "qry_sentence", "pos_sentence"]
            assert record["qry"].startswith(IMAGE_TOKEN) == bool(record["qry_image_path"])
            assert record["pos_text"].startswith(IMAGE_TOKEN) == bool(record["pos_image_path"])
            # MuCo's generated captions: here the exact scene of the image (None for a side without image)
            for path, sentence, side in [(record["qry_image_path"], record["qry_sentence"], row["anchor"]),
                                         (record["pos_image_path"], record["pos_sentence"], row["positive"])]:
                assert side["caption"] == sentence and (sentence is None) == (not path)
                if path:
                    assert syn.caption(read_scene(Image.open(out / path))) == sentence
            assert (record["pos_text"], record["pos_image_path"]) != (record["neg_text"], record["neg_image_path"])
            assert len(row["negative"]) == 1
            for side in [row["anchor"], row["positive"], *row["negative"]]:
                assert IMAGE_TOKEN not in (side["text"] or "")
                if side["image"]:
                    train_images.add(Path(side["image"]))
    eval_images = {(out / p).resolve() for rows in eval_rows.values() for row in rows
                   for p in [row["qry_img_path"], *row["tgt_img_path"]] if p}
    assert train_images and not train_images & eval_images
    assert not {_pixels(p) for p in train_images} & {_pixels(p) for p in eval_images}


QUESTION_TYPES = (("count", "How many"), ("color_of", "What color is the"), ("colors", "Which colors"),
                  ("word", "What word"), ("shape", "shape classification"), ("color", "color classification"))


def test_muco_lines(out):
    files = {p.stem: _jsonl(p) for p in sorted((out / "muco").glob("*.jsonl"))}
    lines = [line for file in files.values() for line in file]
    assert len(lines) == CONFIG.n_muco_images
    assert len({line["image"] for line in lines}) == len(lines)
    named = set(syn.SHAPES) | set(syn.PLURALS.values())
    instructions = {t.name: t.instruction for t in syn.TASKS}
    families = {"caption": [["caption"]], "one-object": [["shape", "color", "word"]],
                "objects": [list(syn.MUCO_QUESTION_ORDER[:CONFIG.k_turns])]}
    first_types = set()
    for name, file in files.items():
        family, _, rotation = name.partition("-r")
        assert family in families, name
        order = families[family][0]
        expected = order[int(rotation):] + order[:int(rotation)] if rotation else order
        for line in file:
            assert set(line) == {"image", "pairs"} and (out / line["image"]).is_file()
            pairs = line["pairs"]
            assert len({p["query"] for p in pairs}) == len({p["positive"] for p in pairs}) == len(pairs)
            queries = {p["query"] for p in pairs}
            if family == "caption":  # a caption pack: the Caption-I2T task on its own
                assert len(pairs) == 1 and pairs[0]["kind"] == "retrieval"
                assert pairs[0]["query"] == instructions["Caption-I2T"]
                continue
            for pair in pairs:
                assert pair["kind"] in {"classification", "vqa"}
                assert IMAGE_TOKEN not in pair["query"] + pair["positive"]
            # a shape is never named on both sides: only the image links a query conversation to its target
            assert not ({w for q in queries for w in q.rstrip("?").split()} & named
                        and {w for p in pairs for w in p["positive"].split()} & named), pairs
            # every pack of a file asks the same question types in the same order (no per-pack text signature
            # inside a batch), a rotation of its family's order
            types = [next(t for t, marker in QUESTION_TYPES if marker in p["query"]) for p in pairs]
            assert types == expected, (name, types)
            first_types.add(types[0])
    assert {"caption", "one-object-r0", "objects-r0"} <= set(files)
    assert {"count", "color_of", "shape", "color", "word"} <= first_types  # every eval question type is also asked first


# ---------------------------------------------------------------------------------------------------- M-BEIR


def test_mbeir_layout(out):
    root = out / "mbeir"
    query_files = sorted((root / "query" / "test").glob("mbeir_*_task*_test.jsonl"))
    assert len(query_files) >= 3
    union = _jsonl(root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl")
    global_dids = [c["did"] for c in union]
    assert len(set(global_dids)) == len(global_dids)
    header, *rows = (root / "instructions" / "query_instructions.tsv").read_text(encoding="utf-8").splitlines()
    assert header.split("\t") == ["query_modality", "cand_modality", "task_id", "dataset_id", "prompt_1",
                                  "prompt_2", "prompt_3", "prompt_4"]
    prompts = {}
    for line in rows:  # UniIR's key: "<dataset_id>, <query_modality>, <cand_modality>"
        parts = line.split("\t")
        prompts[f"{parts[3]}, {parts[0]}, {parts[1]}"] = [p for p in parts[4:] if p]
    assert all(1 <= len(p) <= 4 for p in prompts.values())
    local_union, modalities, needed = [], set(), set()
    for path in query_files:
        stem = path.name.removesuffix("_test.jsonl")
        task_id = int(stem.rsplit("task", 1)[1])
        queries = _jsonl(path)
        pool = _jsonl(root / "cand_pool" / "local" / f"{stem}_cand_pool.jsonl")
        local_union += pool
        by_did = {c["did"]: c for c in pool}
        assert len(by_did) == len(pool) and len(queries) == CONFIG.n_mbeir_queries
        for c in pool:
            assert set(c) == {"did", "txt", "img_path", "modality", "src_content"}
            assert c["modality"] == ",".join(m for m, v in [("image", c["img_path"]), ("text", c["txt"])] if v)
            if c["img_path"]:
                assert (out / c["img_path"]).is_file()  # M-BEIR image paths are relative to the output root
            modalities.add(c["modality"])
        qrels = Counter()
        for line in (root / "qrels" / "test" / f"{stem}_test_qrels.txt").read_text().splitlines():
            qid, zero, did, relevance, task = line.split(" ")
            assert (zero, relevance, int(task)) == ("0", "1", task_id)
            qrels[(qid, did)] += 1
        dataset_ids = {q["qid"].split(":")[0] for q in queries} | {c["did"].split(":")[0] for c in pool}
        assert len(dataset_ids) == 1
        for q in queries:
            assert set(q) == {"qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                              "pos_cand_list", "neg_cand_list", "task_id"}
            assert q["task_id"] == task_id and q["pos_cand_list"]
            assert q["query_modality"] == ",".join(m for m, v in [("image", q["query_img_path"]),
                                                                  ("text", q["query_txt"])] if v)
            if q["query_img_path"]:
                assert (out / q["query_img_path"]).is_file()
            assert not set(q["pos_cand_list"]) & set(q["neg_cand_list"])
            for did in q["pos_cand_list"] + q["neg_cand_list"]:
                assert did in by_did and did in set(global_dids)
            for did in q["pos_cand_list"]:
                needed.add(f"{did.split(':')[0]}, {q['query_modality']}, {by_did[did]['modality']}")
            assert {d for (qid, d) in qrels if qid == q["qid"]} == set(q["pos_cand_list"])
        assert sum(qrels.values()) == sum(len(q["pos_cand_list"]) for q in queries)
    assert sorted(global_dids) == sorted(c["did"] for c in local_union)
    assert needed <= set(prompts)
    assert modalities == {"image", "text"}  # the global pool mixes modalities
    assert {q.split(", ")[1] for q in needed} == {"text", "image", "image,text"}
