"""The M-BEIR format of the synthetic benchmark: UniIR ``TIGER-Lab/M-BEIR`` layout under ``mbeir/`` (queries, local
and global candidate pools, qrels, instructions) for four tasks of three datasets: caption -> image and image ->
caption (``shapes``), image + edit -> edited image (``shapeedit``), image + question -> answer (``shapeqa``). Image
paths are relative to the output root (M-BEIR's image root is the output root, not ``mbeir/``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import SyntheticConfig
from .drawing import ImageWriter
from .scenes import COLOR_NAMES, COUNT_WORDS, PLURALS, SHAPES, WORDS, Scene, caption, distinct_edits, random_scene
from .tasks import BUILDERS, balanced, caption_scenes, stream
from .writing import write_jsonl, write_text_lf

__all__ = ["write_mbeir"]


_MODALITY = {(True, False): "text", (False, True): "image", (True, True): "image,text"}
_MBEIR_PROMPTS = {
    0: ["Identify the image showcasing the described scene.", "Retrieve an image that matches the given caption.",
        "Find a picture that fits the description.", "Show me an image that best matches the caption."],
    3: ["Find a caption for the scene in this image.", "Retrieve the caption that describes this image.",
        "Select the description that matches the given picture.", "Find the text that best describes this image."],
    7: ["Apply the given change to the image and retrieve the resulting image.",
        "Find the image that results from this modification.",
        "Retrieve the picture after making the described change.",
        "Given an image and an edit instruction, find the edited image."],
    6: ["Answer the question about the image.", "Retrieve the answer to the question about this picture.",
        "Find the text that answers the question for this image.",
        "Select the correct answer given the image and the question."],
}


class _MbeirDataset:
    """One M-BEIR dataset: query and candidate ids ``"<dataset_id>:<n>"``; a local pool per task."""

    def __init__(self, name: str, dataset_id: int) -> None:
        self.name, self.id = name, dataset_id
        self.n_queries = self.n_candidates = 0
        self.pools: dict[int, list[dict]] = {}
        self.queries: dict[int, list[dict]] = {}
        self.index: dict[tuple[int, str], str] = {}  # (task, content key) -> did

    def candidate(self, task_id: int, key: str, txt: str | None, img_path: str | None) -> str:
        """The did of a candidate (added to the task's local pool once per content key)."""
        if (task_id, key) not in self.index:
            self.n_candidates += 1
            did = f"{self.id}:{self.n_candidates}"
            self.index[(task_id, key)] = did
            self.pools.setdefault(task_id, []).append(
                {"did": did, "txt": txt, "img_path": img_path,
                 "modality": _MODALITY[(txt is not None, img_path is not None)], "src_content": None})
        return self.index[(task_id, key)]

    def query(self, task_id: int, txt: str | None, img_path: str | None, pos: list[str], neg: list[str]) -> None:
        """Add a query with its positive and negative dids (a positive is never listed as a negative)."""
        self.n_queries += 1
        self.queries.setdefault(task_id, []).append(
            {"qid": f"{self.id}:{self.n_queries}", "query_txt": txt, "query_img_path": img_path,
             "query_modality": _MODALITY[(txt is not None, img_path is not None)], "query_src_content": None,
             "pos_cand_list": pos, "neg_cand_list": [d for d in neg if d not in pos], "task_id": task_id})


def _count_answer(shape: str, count: int) -> str:
    """The answer sentence of a counting question ("there are two circles")."""
    return f"there is one {shape}" if count == 1 else f"there are {COUNT_WORDS[count]} {PLURALS[shape]}"


class _MbeirWriter:
    """Builds the three datasets task by task (each from its own random stream, in a fixed order); no scene's image
    is in two datasets' pools."""

    def __init__(self, images: ImageWriter, cfg: SyntheticConfig) -> None:
        self.images, self.cfg = images, cfg
        self.shapes, self.edits = _MbeirDataset("shapes", 0), _MbeirDataset("shapeedit", 1)
        self.qa = _MbeirDataset("shapeqa", 2)
        self.owner: dict[str, int] = {}  # scene key -> the dataset whose image pool holds it
        self.paths: dict[str, str] = {}  # did -> image path

    def claim(self, scenes: Sequence[Scene], dataset: _MbeirDataset) -> bool:
        """Give the scenes to ``dataset``'s image pool; False (nothing claimed) if another dataset holds one."""
        if any(self.owner.get(s.key, dataset.id) != dataset.id for s in scenes):
            return False
        self.owner.update({s.key: dataset.id for s in scenes})
        return True

    def image_did(self, dataset: _MbeirDataset, task_id: int, scene: Scene, rng: np.random.Generator) -> str:
        """The did of the scene's image in the task's pool (rendered and saved the first time only)."""
        did = dataset.index.get((task_id, scene.key))
        if did is None:
            path = self.images.save(scene, rng, f"mbeir/{dataset.name}_task{task_id}")
            did = dataset.candidate(task_id, scene.key, None, path)
            self.paths[did] = path
        return did

    def caption_to_image(self) -> None:
        """``shapes`` task 0: caption -> image."""
        n, n_neg = self.cfg.n_mbeir_queries, self.cfg.n_mbeir_negatives
        rng = stream(self.cfg.seed, "mbeir", "shapes-task0")
        for _ in range(n):
            while not self.claim(scenes := caption_scenes(rng, 1 + n_neg), self.shapes):
                pass
            dids = [self.image_did(self.shapes, 0, s, rng) for s in scenes]
            self.shapes.query(0, caption(scenes[0]), None, dids[:1], dids[1:])

    def image_to_caption(self) -> None:
        """``shapes`` task 3: image -> caption."""
        n, n_neg = self.cfg.n_mbeir_queries, self.cfg.n_mbeir_negatives
        rng = stream(self.cfg.seed, "mbeir", "shapes-task3")
        for _ in range(n):
            scenes = caption_scenes(rng, 1 + n_neg)
            dids = [self.shapes.candidate(3, s.key, caption(s), None) for s in scenes]
            self.shapes.query(3, None, self.images.save(scenes[0], rng, "mbeir/shapes_task3"), dids[:1], dids[1:])

    def edited_image(self) -> None:
        """``shapeedit`` task 7: image + edit -> edited image (the reference image is in the pool, a negative)."""
        n, n_neg = self.cfg.n_mbeir_queries, self.cfg.n_mbeir_negatives
        rng = stream(self.cfg.seed, "mbeir", "shapeedit-task7")
        for _ in range(n):
            while True:
                reference = random_scene(rng)
                (target, instruction), *rest = distinct_edits(rng, reference, 1 + n_neg)
                others = [scene for scene, _ in rest]
                if self.claim([target, reference, *others], self.edits):
                    break
            dids = [self.image_did(self.edits, 7, s, rng) for s in [target, reference, *others]]
            self.edits.query(7, instruction, self.paths[dids[1]], dids[:1], dids[1:])

    def answers(self) -> None:
        """``shapeqa`` task 6: image + question -> answer sentence (a fixed pool of every possible answer)."""
        n, n_neg, qa = self.cfg.n_mbeir_queries, self.cfg.n_mbeir_negatives, self.qa
        rng = stream(self.cfg.seed, "mbeir", "shapeqa-task6")
        for s in SHAPES:
            for c in range(1, 5):
                qa.candidate(6, f"count:{s}:{c}", _count_answer(s, c), None)
        for s in SHAPES:
            for c in COLOR_NAMES:
                qa.candidate(6, f"color:{s}:{c}", f"the {s} is {c}", None)
        for w in WORDS:
            qa.candidate(6, f"word:{w}", f"the word is '{w}'", None)
        kinds = [("count", BUILDERS["Count-VQA"], COUNT_WORDS[1:5]), ("color", BUILDERS["Color-VQA"], COLOR_NAMES),
                 ("word", BUILDERS["Word-VQA"], WORDS)]
        per_kind = balanced(rng, [k[0] for k in kinds], n)
        golds = {name: iter(balanced(rng, labels, per_kind.count(name))) for name, _, labels in kinds}
        for kind in per_kind:
            name, builder, labels = next(k for k in kinds if k[0] == kind)
            ex = builder(self.images, rng, next(golds[name]), len(labels), "mbeir/shapeqa_task6")
            if name == "count":
                keys = [f"count:{ex.meta['shape']}:{COUNT_WORDS.index(t)}" for t, _ in ex.cands]
            elif name == "color":
                keys = [f"color:{ex.meta['shape']}:{t}" for t, _ in ex.cands]
            else:
                keys = [f"word:{t}" for t, _ in ex.cands]
            dids = [qa.index[(6, k)] for k in keys[:1 + n_neg]]
            qa.query(6, ex.body, ex.query_image, dids[:1], dids[1:])


def _write_files(root: Path, tasks: Sequence[tuple[_MbeirDataset, int, str, str]]) -> list[dict[str, Any]]:
    """Queries, local pools and qrels per task, the global pool and the instructions; the per-task summary."""
    union: list[dict] = []
    summary = []
    for dataset, task_id, _, _ in tasks:
        stem = f"mbeir_{dataset.name}_task{task_id}"
        queries, pool = dataset.queries[task_id], dataset.pools[task_id]
        write_jsonl(root / "query" / "test" / f"{stem}_test.jsonl", queries)
        write_jsonl(root / "cand_pool" / "local" / f"{stem}_cand_pool.jsonl", pool)
        qrels = [f"{q['qid']} 0 {did} 1 {task_id}\n" for q in queries for did in q["pos_cand_list"]]
        write_text_lf(root / "qrels" / "test" / f"{stem}_test_qrels.txt", "".join(qrels))
        union += pool
        summary.append({"dataset": dataset.name, "dataset_id": dataset.id, "task_id": task_id,
                        "queries": len(queries), "candidates": len(pool)})
    write_jsonl(root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl", union)
    rows = ["query_modality\tcand_modality\ttask_id\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"]
    rows += [f"{qm}\t{cm}\t{task_id}\t{d.id}\t" + "\t".join(_MBEIR_PROMPTS[task_id]) + "\n"
             for d, task_id, qm, cm in tasks]
    write_text_lf(root / "instructions" / "query_instructions.tsv", "".join(rows))
    return summary


def write_mbeir(out: Path, images: ImageWriter, cfg: SyntheticConfig) -> dict[str, Any]:
    """Write ``out/mbeir`` (images under ``out/images/mbeir``); return the manifest's M-BEIR entry."""
    writer = _MbeirWriter(images, cfg)
    writer.caption_to_image()
    writer.image_to_caption()
    writer.edited_image()
    writer.answers()
    tasks = [(writer.shapes, 0, "text", "image"), (writer.shapes, 3, "image", "text"),
             (writer.edits, 7, "image,text", "image"), (writer.qa, 6, "image,text", "text")]
    return {"image_root": ".", "tasks": _write_files(out / "mbeir", tasks)}
