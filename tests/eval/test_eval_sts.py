"""STS with the SentEval protocol on a fixture in the full SentEval layout, checked against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

import mmembed
from mmembed.cli import main
from mmembed.eval.sts import STS_YEARS, STSDataError, evaluate_sts, load_senteval

SHARED_SENTEVAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "senteval"
SENTENCES = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.",
             "A cat sits on the mat.", "Two dogs run in the park.", "A woman slices an onion.",
             "Someone is cutting vegetables.", "Shares dropped after the report.", "A  kitten   rests on a rug.",
             "Dogs are playing outside.", "The quick brown fox jumps.", "A child reads a book."]


def _pairs(rng, n):
    return [(SENTENCES[i], SENTENCES[j]) for i, j in rng.integers(0, len(SENTENCES), (n, 2))]


def build_senteval_root(root: Path, years=tuple(STS_YEARS), stsb=("dev", "test"), sick=True, seed=0) -> Path:
    """A SentEval data root: STS12-16 (every subset, one pair with an empty gold line), STS-B and SICK."""
    rng = np.random.default_rng(seed)
    for year in years:
        folder = root / "STS" / f"{year}-en-test"
        folder.mkdir(parents=True)
        for subset in STS_YEARS[year]:
            pairs = _pairs(rng, 6)
            golds = [f"{g:.1f}" for g in rng.uniform(0, 5, 6)]
            golds[2] = ""  # no gold: SentEval skips the pair
            (folder / f"STS.input.{subset}.txt").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
            (folder / f"STS.gs.{subset}.txt").write_text("".join(f"{g}\n" for g in golds))
    folder = root / "STS" / "STSBenchmark"
    folder.mkdir(parents=True)
    for split in stsb:
        (folder / f"sts-{split}.csv").write_text("".join(
            f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{a}\t{b}\n"
            for i, (a, b) in enumerate(_pairs(rng, 20))))
    if sick:
        (root / "SICK").mkdir()
        for name in ("SICK_trial.txt", "SICK_test_annotated.txt"):
            (root / "SICK" / name).write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
                                              + "".join(f"{i}\t{a}\t{b}\t{rng.uniform(1, 5):.2f}\tNEUTRAL\n"
                                                        for i, (a, b) in enumerate(_pairs(rng, 15))))
    return root


@pytest.fixture(scope="module")
def model(qwen2_path):
    return mmembed.load(str(qwen2_path), dtype="float32")


def _reference(model, first, second, gold):
    a = model.encode([" ".join(s.split()) for s in first], normalize=True)
    b = model.encode([" ".join(s.split()) for s in second], normalize=True)
    return 100 * spearmanr((a * b).sum(1), gold).statistic


def test_full_layout_matches_direct_computation(model, tmp_path):
    root = build_senteval_root(tmp_path / "senteval")
    report = evaluate_sts(model, root)
    assert set(report.tasks) == {*STS_YEARS, "STSBenchmark", "SICKRelatedness", "STSBenchmark-dev",
                                 "SICKRelatedness-dev"}
    assert not report.missing
    # STS12 "all": every subset's pairs with a gold pooled into one correlation
    folder = root / "STS" / "STS12-en-test"
    first, second, gold = [], [], []
    for subset in STS_YEARS["STS12"]:
        pairs = [line.split("\t") for line in (folder / f"STS.input.{subset}.txt").read_text().splitlines()]
        golds = (folder / f"STS.gs.{subset}.txt").read_text().splitlines()
        kept = [(p, float(g)) for p, g in zip(pairs, golds) if g]
        first += [p[0] for p, _ in kept]
        second += [p[1] for p, _ in kept]
        gold += [g for _, g in kept]
    sts12 = report.tasks["STS12"]
    assert sts12["n"] == 25 and sts12["aggregation"] == "all"
    assert sts12["score"] == pytest.approx(_reference(model, first, second, gold), abs=1e-4)
    assert sts12["score"] != pytest.approx(sts12["mean"])
    lines = (root / "STS" / "STSBenchmark" / "sts-test.csv").read_text().splitlines()
    fields = [line.split("\t") for line in lines]
    assert report.tasks["STSBenchmark"]["score"] == pytest.approx(
        _reference(model, [f[5] for f in fields], [f[6] for f in fields], [float(f[4]) for f in fields]), abs=1e-4)
    tests = [report.tasks[t]["score"] for t in [*STS_YEARS, "STSBenchmark", "SICKRelatedness"]]
    assert report.summary["avg"] == pytest.approx(np.mean(tests))
    assert report.data["files"] and all(len(h) == 64 for h in report.data["files"].values())


def test_absent_tasks_are_missing_not_zero(model, tmp_path):
    root = build_senteval_root(tmp_path / "partial", years=("STS13",), stsb=("dev",), sick=False)
    (root / "STS" / "STS12-en-test").mkdir()
    (root / "STS" / "STS12-en-test" / "STS.input.MSRpar.txt").write_text("a\tb\n")
    report = evaluate_sts(model, root)
    assert set(report.tasks) == {"STS13", "STSBenchmark-dev"}
    assert "subset(s)" in report.missing["STS12"] and "not found" in report.missing["STS14"]
    assert {"STSBenchmark", "SICKRelatedness", "SICKRelatedness-dev"} <= set(report.missing)
    assert report.summary["avg"] is None and report.summary["tasks_present"] == "1/7"
    assert report.summary["avg_present"] == pytest.approx(report.tasks["STS13"]["score"])
    assert "missing" in report.to_markdown()


def test_bad_gold_line_names_file_and_line(tmp_path):
    root = build_senteval_root(tmp_path / "bad", years=("STS13",), stsb=(), sick=False)
    gs = root / "STS" / "STS13-en-test" / "STS.gs.headlines.txt"
    lines = gs.read_text().splitlines()
    lines[3] = "four"
    gs.write_text("\n".join(lines) + "\n")
    with pytest.raises(STSDataError, match=r"STS.gs.headlines.txt:4"):
        load_senteval(root)


def test_cli_on_stsb_dev(qwen2_path, model, tmp_path):
    """`mmembed eval sts --model <dir> --data <senteval root>` on STS-B dev (the shared root, else a fixture)."""
    root = SHARED_SENTEVAL if SHARED_SENTEVAL.is_dir() else build_senteval_root(tmp_path / "r", years=(), sick=False,
                                                                                 stsb=("dev",))
    out = tmp_path / "out"
    assert main(["eval", "sts", "--model", str(qwen2_path), "--data", str(root), "--dtype", "float32",
                 "-o", str(out)]) == 0
    saved = json.loads((out / "sts.json").read_text())
    held_out = not (root / "STS" / "STSBenchmark" / "sts-test.csv").is_file()  # the shared root holds no test split
    assert ("STSBenchmark" in saved["missing"]) == held_out and ("STSBenchmark" in saved["tasks"]) != held_out
    dev = root / "STS" / "STSBenchmark" / "sts-dev.csv"
    fields = [line.split("\t") for line in dev.read_text().splitlines()]
    expected = _reference(model, [f[5] for f in fields], [f[6] for f in fields], [float(f[4]) for f in fields])
    assert saved["tasks"]["STSBenchmark-dev"]["score"] == pytest.approx(expected, abs=1e-4)
    assert saved["model"]["name_or_path"] == str(qwen2_path)
    assert (out / "sts.md").read_text().count("STSBenchmark-dev") == 1
    assert (out / "sts.png").read_bytes()[:4] == b"\x89PNG"


def _stsb(root: Path, lines: list[str]) -> Path:
    folder = root / "STS" / "STSBenchmark"
    folder.mkdir(parents=True)
    path = folder / "sts-dev.csv"
    path.write_bytes("".join(lines).encode() if isinstance(lines[0], str) else b"".join(lines))
    return path


@pytest.mark.parametrize("bad, message", [
    ("nan", ":3: score 'nan' is not a finite number"),
    ("inf", ":3: score 'inf' is not a finite number"),
    ("", ":3: score missing"),
    ("3.x", ":3: score '3.x' is not a number"),
])
def test_stsb_gold_scores_must_be_finite_numbers(tmp_path, bad, message):
    rows = [f"g\tf\t2012\t{i:04d}\t{score}\tSentence {i} one.\tSentence {i} two.\n"
            for i, score in enumerate(["1.0", "4.0", bad, "2.5"])]
    path = _stsb(tmp_path, rows)
    with pytest.raises(STSDataError) as error:
        load_senteval(tmp_path, splits=("dev",), tasks=["STSBenchmark"])
    assert str(error.value).startswith(f"{path}{message}")


def test_too_few_pairs_empty_sentences_and_bad_bytes_name_the_file(tmp_path):
    row = "g\tf\t2012\t0001\t{score}\t{a}\t{b}\n"
    cases = [
        ([row.format(score=3.0, a="One pair.", b="Only.")], ": 1 pair(s) with a gold score; Spearman needs at least 2"),
        ([row.format(score=3.0, a="A.", b="B."), row.format(score=3.0, a="C.", b="D.")],
         ": every gold score is 3; Spearman needs at least two different ones"),
        ([row.format(score=3.0, a="A.", b="B."), row.format(score=1.0, a="   ", b="D.")], ":2: empty sentence"),
    ]
    for number, (lines, message) in enumerate(cases):
        path = _stsb(tmp_path / str(number), lines)
        with pytest.raises(STSDataError) as error:
            load_senteval(tmp_path / str(number), splits=("dev",))
        assert str(error.value).startswith(f"{path}{message}"), str(error.value)
    path = _stsb(tmp_path / "bytes", [row.format(score=1, a="A.", b="B.").encode(), b"g\tf\t2012\t2\t2\t\xff\tB.\n"])
    with pytest.raises(STSDataError) as error:
        load_senteval(tmp_path / "bytes", splits=("dev",))
    assert str(error.value).startswith(f"{path}:2: not valid UTF-8 (byte 0xff at byte 14 of the line)")


def test_sts_year_and_sick_checks_name_file_and_line(tmp_path):
    root = build_senteval_root(tmp_path / "year", years=("STS13",), stsb=(), sick=True)
    gs = root / "STS" / "STS13-en-test" / "STS.gs.FNWN.txt"
    lines = gs.read_text().splitlines()
    gs.write_text("\n".join([lines[0], "nan", *lines[2:]]) + "\n")
    with pytest.raises(STSDataError, match=r"STS.gs.FNWN.txt:2: gold score 'nan' is not a finite number"):
        load_senteval(root)
    gs.write_text("\n".join([lines[0], "", "", "", "", ""]) + "\n")  # empty lines mean "no gold": one pair left
    with pytest.raises(STSDataError, match=r"STS.gs.FNWN.txt \(STS13 FNWN\): 1 pair\(s\) with a gold score"):
        load_senteval(root)
    build_senteval_root(tmp_path / "sick", years=(), stsb=(), sick=True)
    sick = tmp_path / "sick" / "SICK" / "SICK_test_annotated.txt"
    sick.write_text(sick.read_text().replace("relatedness_score", "score", 1))
    with pytest.raises(STSDataError, match=r"SICK_test_annotated.txt:1: the header lacks \['relatedness_score'\]"):
        load_senteval(tmp_path / "sick")


def test_cli_refuses_a_nan_gold_score_with_one_line(qwen2_path, tmp_path, capsys):
    rows = [f"g\tf\t2012\t{i:04d}\t{score}\tSentence {i} one.\tSentence {i} two.\n"
            for i, score in enumerate(["1.0", "nan", "2.5"])]
    path = _stsb(tmp_path / "root", rows)
    code = main(["eval", "sts", "--model", str(qwen2_path), "--data", str(tmp_path / "root"), "--split", "dev"])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:2: score 'nan' is not a finite number" in err and "Traceback" not in err
