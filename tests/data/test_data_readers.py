"""The reader registry (``mmembed.data.readers``) and the typed row constructors (``mmembed.data.rows``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmembed.data import formats, readers
from mmembed.data.readers import (
    FORMATS,
    document_groups,
    read_documents,
    read_parts,
    read_rows,
    read_teacher_score_rows,
    reader_names,
    register_reader,
)
from mmembed.data.rows import grace_row, row, side, text_row
from mmembed.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def _write(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_constructors_spell_the_rows_the_readers_used_to_write_by_hand():
    assert side("a") == {"text": "a", "image": None} and side(None, "/x.png") == {"text": None, "image": "/x.png"}
    assert text_row("a", "b") == {"anchor": {"text": "a", "image": None}, "positive": {"text": "b", "image": None}}
    assert text_row("a", ["b", "c"], "n", bank_group=2) == {
        "anchor": {"text": "a", "image": None},
        "positive": [{"text": "b", "image": None}, {"text": "c", "image": None}],
        "negative": [{"text": "n", "image": None}], "bank_group": 2}
    assert list(text_row("a", "b", "n", score=0.5)) == ["anchor", "positive", "negative", "score"]
    assert row(side("d"), entry=3) == {"anchor": {"text": "d", "image": None}, "entry": 3}
    assert row(side("a"), side("b"), []) == {"anchor": side("a"), "positive": side("b"), "negative": []}
    assert grace_row("p", "q") == {"text": "p", "query": "q"}
    assert grace_row("p", "q", "n") == {"text": "p", "query": "q", "negative": "n"}


def test_the_registry_names_every_training_format_once():
    assert reader_names() == ("triplets", "pairs", "mmeb", "multiturn", "sick", "sentences", "documents", "stsb",
                              "sick_relatedness", "teacher_scores", "grace")
    assert [n for n in reader_names() if FORMATS[n].folder_mixture] == ["triplets", "pairs", "mmeb", "multiturn"]
    assert {n: FORMATS[n].rows for n in ("multiturn", "documents", "grace", "mmeb")} == {
        "multiturn": "multiturn", "documents": "documents", "grace": "grace", "mmeb": "contrastive"}


def test_each_json_lines_format_reads_what_its_reader_reads(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    files = {
        "triplets": _write(tmp_path / "t.jsonl", [{"anchor": "q", "positive": {"image_path": "a.png"},
                                                   "negative": ["n1", "n2"]}, {"anchor": "r", "positive": "s"}]),
        "pairs": _write(tmp_path / "p.jsonl", [{"query": "q", "document": "d"}]),
        "mmeb": _write(tmp_path / "m.jsonl", [{"qry": "<|image_1|> what", "qry_image_path": "a.png",
                                               "pos_text": "it", "neg_text": "['x', 'y']"}]),
        "multiturn": _write(tmp_path / "mt.jsonl", [{"image": "a.png", "pairs": [{"query": ["a", "b"],
                                                                                  "positive": "c"}]}]),
        "grace": _write(tmp_path / "g.jsonl", [{"query": "q", "positive": "p", "negative": "n"}]),
    }
    direct = {"triplets": formats.read_triplets, "pairs": formats.read_pairs, "mmeb": formats.read_mmeb_train,
              "multiturn": formats.read_multiturn}
    for name, path in files.items():
        got = read_rows(path, name, image_root=tmp_path)
        expected = formats.read_grace(path) if name == "grace" else direct[name](path, tmp_path)
        assert got == expected and got, name
    assert read_rows(files["triplets"], "triplets", image_root=tmp_path)[0] == {
        "anchor": side("q"), "positive": side(None, str((tmp_path / "a.png").resolve())),
        "negative": [side("n1"), side("n2")]}
    assert read_rows(files["grace"], "grace") == [grace_row("p", "q", "n")]
    assert read_rows(files["triplets"], "triplets", image_root=tmp_path, max_rows=1) == [
        read_rows(files["triplets"], "triplets", image_root=tmp_path)[0]]


def test_text_formats_read_sentences_sick_and_graded_pairs(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("one\n\n two \n")
    assert read_rows(sentences, "sentences") == [text_row("one", "one"), text_row("two", "two")]
    stsb = tmp_path / "sts.csv"
    stsb.write_text("g\tf\t2012\t1\t5.0\tA  cat.\tA cat.\ng\tf\t2012\t2\t1.0\tA dog.\tRain.\n")
    assert read_rows(stsb, "stsb") == [text_row("A cat.", "A cat.", score=1.0),
                                       text_row("A dog.", "Rain.", score=0.2)]
    sick = tmp_path / "SICK_train.txt"
    sick.write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
                    "1\tA man runs.\tA person runs.\t5\tENTAILMENT\n2\tA man runs.\tA man sits.\t1\tCONTRADICTION\n")
    assert read_rows(tmp_path, "sick_relatedness") == read_rows(sick, "sick_relatedness") == [
        text_row("A man runs.", "A person runs.", score=1.0), text_row("A man runs.", "A man sits.", score=0.0)]
    assert read_rows(tmp_path, "sick") == formats.read_sick_triplets(tmp_path) == [
        text_row("A man runs.", "A person runs.", "A man sits.")]
    scores = _write(tmp_path / "ts.jsonl", [{"anchor": "a", "positive": "b", "teacher_score": 0.5, "teacher": "t"},
                                            {"anchor": "c", "positive": "d", "teacher_score": -0.25, "teacher": "u"}])
    assert read_rows(scores, "teacher_scores") == [row(side("a"), side("b"), teacher_score=0.5),
                                                   row(side("c"), side("d"), teacher_score=-0.25)]
    assert read_teacher_score_rows(scores, "u") == [row(side("c"), side("d"), teacher_score=-0.25)]


@pytest.mark.skipif(not (SHARED / "sick" / "SICK_train.txt").is_file(), reason="../shared/data/sick not present")
def test_shared_sick_reads_alike_through_the_registry():
    assert read_rows(SHARED / "sick", "sick") == formats.read_sick_triplets(SHARED / "sick")
    assert len(read_rows(SHARED / "sick", "sick_relatedness")) == 4500


def test_documents_keep_groups_in_first_seen_order(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"sentences": ["a", "b"], "group": "en"}, {"sentences": ["c"]},
                                         {"sentences": ["d", 5], "group": "en"}])
    assert read_rows(path, "documents") == [{"sentences": ["a", "b"], "group": "en"},
                                            {"sentences": ["c"], "group": ""},
                                            {"sentences": ["d", "5"], "group": "en"}]
    assert read_documents(path) == document_groups(read_rows(path, "documents")) == (
        [["a", "b"], ["c"], ["d", "5"]], [0, 1, 0], ["en", ""])
    _write(path, ['{"sentences": ["a"]}', '{"text": "no sentences"}'])
    with pytest.raises(DataError) as error:
        read_rows(path, "documents")
    assert str(error.value) == f"{path}:2: a document line is {{\"sentences\": [...], \"group\": ...}} ('sentences')."


def test_unknown_format_is_one_line_naming_the_choices(tmp_path):
    with pytest.raises(ConfigError) as error:
        read_rows(tmp_path / "x.tsv", "tsv")
    assert str(error.value) == f"train_format='tsv'; choose one of {sorted(reader_names())}."
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^train_format='tsv'; choose one of \['documents'"):
        read_parts(str(tmp_path / "x.tsv"), "tsv")


def test_a_bad_record_names_file_and_line_or_is_skipped(tmp_path, caplog):
    path = _write(tmp_path / "t.jsonl", [{"anchor": "a", "positive": "b"}, "{broken", {"anchor": "c"}])
    with pytest.raises(DataError) as error:
        read_rows(path, "triplets")
    assert str(error.value) == f"{path}:2: invalid JSON (Expecting property name enclosed in double quotes)."
    path.write_text(path.read_text().replace("{broken\n", ""))
    with pytest.raises(DataError) as error:
        read_parts(str(tmp_path), "triplets")
    assert str(error.value) == (f"{path}:2: missing ['positive'] (a triplet has 'anchor', 'positive' and "
                                f"'negative').")
    assert read_rows(path, "triplets", skip_bad_records=True) == [text_row("a", "b")]
    assert "skipped 1 bad records" in caplog.text


def test_read_parts_reads_a_mixture(tmp_path):
    folder = tmp_path / "mix"
    folder.mkdir()
    b = _write(folder / "b.jsonl", [{"anchor": f"b{i}", "positive": "p"} for i in range(3)])
    a = _write(folder / "a.jsonl", [{"query": "qa", "document": "da"}])
    _write(folder / "ignored.txt", ["not read"])
    parts = read_parts(str(folder), "pairs")
    assert parts == [[text_row("qa", "da")], [text_row(f"b{i}", "p") for i in range(3)]]
    parts = read_parts(f" {b} ,{a},", "pairs", max_rows=2)
    assert parts == [[text_row("b0", "p"), text_row("b1", "p")], [text_row("qa", "da")]]
    assert [p.where for p in parts] == [[f"{b}:1", f"{b}:2"], [f"{a}:1"]]
    sentences = tmp_path / "s.txt"
    sentences.write_text("x\n")
    assert read_parts(f"{a},{sentences}", "pairs,sentences") == [[text_row("qa", "da")], [text_row("x", "x")]]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [((None, "triplets"), {}, ConfigError, "no training data: set train_file (and train_format)."),
             ((str(empty), "triplets"), {}, DataError, f"train_file folder {empty} holds no *.jsonl files."),
             ((str(folder), "pairs"), {"dataset_weights": [1.0]}, ConfigError, "1 dataset_weights for 2 train files."),
             ((f"{a},{a}", "pairs,pairs,pairs"), {}, ConfigError,
              "2 train files but 3 train formats: give one format, or one per file.")]
    for args, options, kind, message in cases:
        with pytest.raises(kind) as error:
            read_parts(*args, **options)
        assert str(error.value) == message


def test_a_registered_reader_is_read_by_name(tmp_path):
    @register_reader("lines_as_pairs")
    def lines_as_pairs(path, image_root, skip_bad):
        return [text_row(*line.split("|")) for line in Path(path).read_text().splitlines()]

    try:
        path = tmp_path / "x.txt"
        path.write_text("a|b\nc|d\n")
        assert read_rows(path, "lines_as_pairs", max_rows=1) == [text_row("a", "b")]
        assert "lines_as_pairs" in reader_names()
        with pytest.raises(ValueError, match="train format 'lines_as_pairs' is already registered"):
            register_reader("lines_as_pairs")(lines_as_pairs)
    finally:
        readers.FORMATS.pop("lines_as_pairs")
