"""The MMEB formats of the synthetic benchmark: ``mmeb_eval/<Task>.jsonl`` + ``tasks.yaml`` (VLM2Vec
``TIGER-Lab/MMEB-eval`` rows, gold candidate first) and ``mmeb_train/<Task>.jsonl`` for the in-distribution tasks
(``TIGER-Lab/MMEB-train`` rows plus MuCo's generated captions ``qry_sentence`` / ``pos_sentence``, here the exact
scene captions; ``read_mmeb_train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import SyntheticConfig
from .drawing import ImageWriter
from .tasks import TASKS, Example, TaskInfo, examples
from .writing import write_jsonl, write_text_lf

__all__ = ["IMAGE_TOKEN", "write_mmeb_task", "write_tasks_yaml"]

IMAGE_TOKEN = "<|image_1|>"


def _texts(task: TaskInfo, ex: Example) -> tuple[str, list[str]]:
    """``qry_text`` and ``tgt_text`` as the real MMEB rows write them (Phi-3 image token before imaged text)."""
    instruction = f"{task.instruction}: {ex.body}" if ex.body else task.instruction
    query = (f"{IMAGE_TOKEN}\n" if ex.query_image else "") + instruction + "\n"
    targets = [f"{IMAGE_TOKEN}\n{task.target_instruction}\n" if image else text for text, image in ex.cands]
    return query, targets


def write_mmeb_task(out: Path, images: ImageWriter, cfg: SyntheticConfig, task: TaskInfo) -> dict[str, Any]:
    """Write the task's MMEB-eval rows (and its MMEB-train rows when in-distribution); return its manifest entry."""
    n_cands = task.n_candidates(cfg)
    rows = []
    for ex in examples(task, images, cfg, "eval", cfg.n_eval_queries, n_cands):
        query, targets = _texts(task, ex)
        rows.append({"qry_inst": task.instruction, "qry_text": query, "qry_img_path": ex.query_image,
                     "tgt_inst": task.target_instruction, "tgt_text": targets,
                     "tgt_img_path": [image for _, image in ex.cands]})
    write_jsonl(out / "mmeb_eval" / f"{task.name}.jsonl", rows)
    n_train = 0
    if task.distribution == "IND":
        train = []
        for ex in examples(task, images, cfg, "train", cfg.n_train_per_task, 2):
            query, targets = _texts(task, ex)
            train.append({"qry": query, "qry_image_path": ex.query_image, "pos_text": targets[0],
                          "pos_image_path": ex.cands[0][1], "neg_text": targets[1],
                          "neg_image_path": ex.cands[1][1], "qry_sentence": images.caption(ex.query_image),
                          "pos_sentence": images.caption(ex.cands[0][1])})
        write_jsonl(out / "mmeb_train" / f"{task.name}.jsonl", train)
        n_train = len(train)
    return {"name": task.name, "meta_task": task.meta_task, "distribution": task.distribution,
            "n_candidates": n_cands, "chance": task.chance(cfg), "eval_queries": len(rows), "train_rows": n_train}


def write_tasks_yaml(out: Path) -> None:
    """``mmeb_eval/tasks.yaml``: name, meta task and distribution of every task."""
    write_text_lf(out / "mmeb_eval" / "tasks.yaml", "tasks:\n" + "".join(
        f"  - {{name: {t.name}, meta_task: {t.meta_task}, distribution: {t.distribution}}}\n" for t in TASKS))
