"""``mmembed index build`` and ``mmembed index search`` end to end on a tiny model: the results are the API's, a
rerun resumes, and user errors (a bad record, another model) are one line with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from index_support import write_corpus

from mmembed import testing
from mmembed.cli import main
from mmembed.index import Index


def test_build_then_search_end_to_end(qwen2_path, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 60)
    out = tmp_path / "index"
    argv = ["index", "build", "--corpus", str(corpus), "-o", str(out), "--model", str(qwen2_path),
            "--shard-size", "25", "--vector-dtype", "float32", "-q"]
    assert main(argv) == 0
    assert "60 records in 3 shards of dimension 64 (float32)" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-0000{i}.{kind}" for i in range(3)
                                                         for kind in ("ids.json", "npy")]
    assert main(argv) == 0  # a rerun finds every shard finished
    assert "3 were finished before" in capsys.readouterr().err

    queries = tmp_path / "queries.txt"
    queries.write_text('{"id": "q1", "text": "a quick dog runs"}\n\nbright cloud over the river\n')
    results = tmp_path / "results.jsonl"
    assert main(["index", "search", str(out), "red cat", "--queries-file", str(queries), "-k", "4",
                 "-o", str(results)]) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["query"], r["id"]) for r in lines] == [("red cat", None), ("a quick dog runs", "q1"),
                                                      ("bright cloud over the river", None)]
    ids, scores = Index.load(out).search(["red cat", "a quick dog runs", "bright cloud over the river"], 4)
    assert [[hit["id"] for hit in r["results"]] for r in lines] == ids
    np.testing.assert_allclose([[hit["score"] for hit in r["results"]] for r in lines], scores, atol=1e-6)

    assert main(["index", "search", str(out), "red cat", "-k", "4", "--faiss", "none", "--id-prefix", "doc-c"]) == 0
    printed = json.loads(capsys.readouterr().out)
    filtered, _ = Index.load(out, method="blocked").search(["red cat"], 4, id_prefix="doc-c")
    assert [hit["id"] for hit in printed["results"]] == filtered[0] and filtered[0][0].startswith("doc-c")


def test_user_errors_are_one_line_with_exit_code_2(qwen2_path, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    out = tmp_path / "index"
    common = ["--corpus", str(corpus), "-o", str(out), "--shard-size", "4", "-q"]
    assert main(["index", "build", *common, "--model", str(qwen2_path)]) == 0
    capsys.readouterr()
    other = testing.build_tiny_qwen2(tmp_path / "other", seed=1)
    assert main(["index", "build", *common, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mmembed: error: index folder '{out}' was built with another "
                                                   f"model")

    with corpus.open("a") as f:
        f.write('{"id": "doc-x", "txt": "a misspelt key"}\n')
    assert main(["index", "build", *common, "--model", str(qwen2_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"mmembed: error: {corpus}:7: the record has neither 'text' nor 'image' (its keys: id, txt); "
                   f'give {{"id": ..., "text": ...}} (and/or "image": a path inside the image root).\n')

    assert main(["index", "search", str(tmp_path / "missing"), "a query"]) == 2
    assert "is not an index folder (it has no manifest.json)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--shard-size", "0"], "0 must be at least 1"),
                                           (["--vector-dtype", "int8"], "invalid choice: 'int8'")])
def test_bad_options_are_refused_by_the_parser(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        main(["index", "build", "--corpus", "c.jsonl", "-o", str(tmp_path), *argv])
    assert caught.value.code == 2 and message in capsys.readouterr().err
