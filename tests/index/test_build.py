"""Sharded index builds: 2 gloo processes write the shards of 1 process; a killed build resumes to the index of an
uninterrupted one; a rerun with another model, corpus or vector dtype is refused; bad records name file:line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from index_support import assert_same_index, write_corpus
from support import free_port

import mmembed
from mmembed import testing
from mmembed.errors import DataError, RunStateError
from mmembed.eval.encoding import encode_side
from mmembed.index import Index, build
from mmembed.index.corpus import Corpus


def _worker(rank: int, world: int, port: int, corpus: str, out: str, model: str, report: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    result = build(corpus, out, model, shard_size=20, dtype="float32", batch_size=8)
    with open(f"{report}.{rank}", "w") as f:
        json.dump({"encoded": result.encoded, "skipped": result.skipped}, f)


def test_two_gloo_processes_write_the_shards_of_one_process(qwen2_path, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 90)  # 5 shards: 20 x 4 + 10
    report = str(tmp_path / "report")
    mp.start_processes(_worker, args=(2, free_port(), str(corpus), str(tmp_path / "two"), str(qwen2_path), report),
                       nprocs=2, start_method="spawn", join=True)
    single = build(corpus, tmp_path / "one", qwen2_path, shard_size=20, dtype="float32", batch_size=8)
    assert single.encoded == [0, 1, 2, 3, 4] and single.skipped == []
    assert_same_index(tmp_path / "one", tmp_path / "two", atol=1e-6)
    shares = [json.loads(Path(f"{report}.{rank}").read_text())["encoded"] for rank in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]]  # round-robin: each process encoded its own shards, none twice


CHILD = """
import sys
from mmembed.eval.encoding import encode_side
from mmembed.index import Index, build
build(sys.argv[1], sys.argv[2], sys.argv[3], shard_size=40, dtype="float32", batch_size=1)
"""


def test_a_killed_build_resumes_to_the_uninterrupted_index(qwen2_path, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 400)  # 10 shards of 40, about 0.1 s each
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(out), str(qwen2_path)], env=env,
                             stderr=subprocess.PIPE)
    first = out / "shard-00000.npy"
    deadline = time.monotonic() + 120
    while not first.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert first.exists(), child.stderr.read().decode()[-2000:]
    os.kill(child.pid, signal.SIGKILL)  # the child we started, by its own pid
    child.wait()
    child.stderr.close()
    finished = sorted(int(p.stem.split("-")[1]) for p in out.glob("shard-*.npy"))
    assert 1 <= len(finished) < 10, "the build finished before it was killed: nothing to resume"
    stamp = first.stat().st_mtime_ns

    resumed = build(corpus, out, qwen2_path, shard_size=40, dtype="float32", batch_size=1)
    assert resumed.skipped == finished
    assert resumed.encoded == [i for i in range(10) if i not in finished]
    assert first.stat().st_mtime_ns == stamp  # a finished shard is not rewritten
    build(corpus, tmp_path / "whole", qwen2_path, shard_size=40, dtype="float32", batch_size=1)
    assert_same_index(out, tmp_path / "whole", atol=1e-6)


def test_a_rerun_with_other_settings_is_refused(qwen2_path, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 12)
    out = tmp_path / "index"
    build(corpus, out, qwen2_path, shard_size=5)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    other_model = testing.build_tiny_qwen2(tmp_path / "other_model", seed=1)
    other_corpus = write_corpus(tmp_path / "other.jsonl", 12, seed=1)
    cases = [({"model": other_model}, "another model (its weights fingerprint differs)"),
             ({"corpus": other_corpus}, "another corpus"),
             ({"dtype": "float32"}, "another vector dtype"),
             ({"shard_size": 6}, "another shard size"),
             ({"prompt": "Represent this document: "}, "another document prompt"),
             ({"quantize": "int8"}, "another model setting 'quantize': null there, 'int8' now")]
    for change, what in cases:
        options = {"corpus": corpus, "output": out, "model": qwen2_path, "shard_size": 5, **change}
        with pytest.raises(RunStateError) as caught:
            build(**options)
        message = str(caught.value)
        assert what in message and "\n" not in message
        assert f"index folder '{out}'" in message and "build into another folder" in message
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written, nothing mixed
    again = build(corpus, out, qwen2_path, shard_size=5)  # the same settings: everything is finished
    assert again.skipped == [0, 1, 2] and again.encoded == []


def test_shard_files_without_a_manifest_are_not_taken_over(qwen2_path, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 4)
    (tmp_path / "index").mkdir()
    np.save(tmp_path / "index" / "shard-00000.npy", np.zeros((4, 64), dtype=np.float16))
    with pytest.raises(RunStateError, match="holds shard files .* but no manifest.json"):
        build(corpus, tmp_path / "index", qwen2_path)


BAD_RECORDS = [
    ('{"text": "no id"}', "the record has no 'id'"),
    ('{"id": "x", "text": "unterminated', "invalid JSON"),
    ('{"id": "x", "text": ""}', "'text' must be a non-empty string"),
    ('{"id": "x", "title": "neither"}', "neither 'text' nor 'image'"),
    ('{"id": "x", "image": "../outside.png"}', "leaves the image root"),
    ('{"id": "x", "image": "missing.png"}', "does not exist"),
    ('{"id": "doc-a-0", "text": "a duplicate id"}', "was already used at {path}:1"),
    ('["a list"]', "a record must be a JSON object"),
]


@pytest.mark.parametrize("line, message", BAD_RECORDS, ids=[m.split()[-1] for _, m in BAD_RECORDS])
def test_a_bad_record_is_named_by_file_and_line(tmp_path, line, message):
    path = write_corpus(tmp_path / "data" / "corpus.jsonl", 2)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n" + line + "\n")  # a blank line 3 is skipped; the bad record is line 4
    with pytest.raises(DataError) as caught:
        Corpus.open(path)
    assert str(caught.value).startswith(f"{path}:4: ")
    assert message.format(path=path) in str(caught.value)


def test_a_bad_record_stops_a_build_before_the_model_loads(tmp_path):
    path = write_corpus(tmp_path / "corpus.jsonl", 3)
    with path.open("a") as f:
        f.write('{"id": 7, "text": "\\ud800"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:4: the text holds '.ud800' at character 0"):
        build(path, tmp_path / "index", tmp_path / "no-such-model")  # the corpus is checked first


def test_parquet_and_json_lines_give_the_same_records(tmp_path, images):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    images[0].save(tmp_path / "cat.png")
    rows = [{"id": "t1", "text": "a text", "image": None}, {"id": "i1", "text": None, "image": "cat.png"},
            {"id": "b1", "text": "a caption", "image": "cat.png"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus.parquet")
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet, jsonl = Corpus.open(tmp_path / "corpus.parquet"), Corpus.open(tmp_path / "corpus.jsonl")
    assert len(parquet) == len(jsonl) == 3 and parquet.has_images and jsonl.has_images
    strip = [(r.id, r.text, r.image) for r in parquet.records(0, 3)]
    assert strip == [(r.id, r.text, r.image) for r in jsonl.records(0, 3)]
    assert strip[1] == ("i1", None, str((tmp_path / "cat.png").resolve()))
    assert [r.where for r in parquet.records(1, 3)] == [f"{tmp_path / 'corpus.parquet'}:row {i}" for i in (1, 2)]
    assert [r.where for r in jsonl.records(1, 3)] == [f"{tmp_path / 'corpus.jsonl'}:{i}" for i in (2, 3)]


def test_image_records_are_encoded_as_the_model_encodes_them(qwen2_vl_path, tmp_path, images):
    (tmp_path / "pics").mkdir()
    for i, image in enumerate(images[:2]):
        image.save(tmp_path / "pics" / f"{i}.png")
    rows = [{"id": "i0", "image": "pics/0.png"}, {"id": "t0", "text": "a red square"},
            {"id": "b1", "text": "a caption", "image": "pics/1.png"}, {"id": "t1", "text": "photo.jpg"}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(corpus, tmp_path / "index", qwen2_vl_path, shard_size=3, dtype="float32")
    index = Index.load(tmp_path / "index", method="blocked")
    assert index.ids == ["i0", "t0", "b1", "t1"] and index.manifest["corpus"]["image_root"] == str(tmp_path)
    model = mmembed.load(str(qwen2_vl_path))
    inputs = [tmp_path / "pics" / "0.png", {"text": "a red square"},
              {"text": "a caption", "image": tmp_path / "pics" / "1.png"}, {"text": "photo.jpg"}]  # text, not a path
    np.testing.assert_allclose(index.vectors(), encode_side(model, inputs, "document"), atol=1e-5, rtol=0)


def test_a_folder_of_images_with_its_imagefolder_metadata_is_a_corpus(qwen2_vl_path, tmp_path, images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images[:2]):
        image.save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text('{"file_name": "0.png"}\n{"file_name": "1.png", "text": "a caption"}\n')
    build(folder, tmp_path / "index", qwen2_vl_path, dtype="float32")
    index = Index.load(tmp_path / "index", method="blocked")
    assert index.ids == ["0.png", "1.png"]
    expected = encode_side(mmembed.load(str(qwen2_vl_path)),
                           [folder / "0.png", {"text": "a caption", "image": folder / "1.png"}], "document")
    np.testing.assert_allclose(index.vectors(), expected, atol=1e-5, rtol=0)
    (folder / "metadata.jsonl").unlink()
    with pytest.raises(DataError, match=r"holds none of metadata.jsonl, metadata.parquet, corpus.jsonl"):
        Corpus.open(folder)
