"""The entry point of the synthetic benchmark: ``generate(out, SyntheticConfig(...))`` writes every format under one
output folder and a ``manifest.json`` (config, tasks, file hashes); it replaces an earlier output there and refuses a
non-empty folder it did not write."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from ..errors import OutputPathError
from .config import SyntheticConfig
from .drawing import ImageWriter
from .mbeir import write_mbeir
from .mmeb import write_mmeb_task, write_tasks_yaml
from .muco import write_muco
from .tasks import TASKS
from .writing import write_text_lf

__all__ = ["GENERATOR", "VERSION", "generate"]

# The manifest's generator name: kept as the module's former path so that outputs written before the move to
# mmembed.synthetic are still recognised (and replaced) by generate, and the manifest bytes stay the same.
GENERATOR = "mmembed.data.synthetic"
VERSION = "1.5"  # 1.1: mmeb_train rows carry qry_sentence / pos_sentence; 1.2: MuCo pairs as the IND tasks;
# 1.3: a quarter of the MuCo lines are one-object packs phrased as Shape-Cls / Color-Cls (+ Word-VQA);
# 1.4: MuCo packs ask fixed question types in a fixed order (MUCO_QUESTION_ORDER), every training scene has a word;
# 1.5: one MuCo file per question-type order, the orders rotated so that every type also comes first

_OWNED = ("images", "mmeb_eval", "mmeb_train", "muco", "mbeir", "manifest.json")


def _prepare(out: Path) -> None:
    """Remove what an earlier ``generate`` wrote there; refuse a non-empty folder it did not write."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    manifest = out / "manifest.json"
    ours = False
    if manifest.is_file():
        try:
            ours = json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR
        except (json.JSONDecodeError, AttributeError):
            ours = False
    if not ours and any(out.iterdir()):
        raise OutputPathError(f"'{out}' is not empty and holds no synthetic-data manifest (mmembed synthetic did not "
                              f"write it): give a new or empty folder.")
    for name in _OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def generate(out: str | Path, config: SyntheticConfig | None = None) -> Path:
    """Write the benchmark and training data under ``out`` (see :mod:`mmembed.synthetic` for the layout) and return
    ``out``. The same config gives byte-identical JSON-lines / YAML / TSV files and identical image pixels; an
    earlier output there is replaced, and a non-empty folder it did not write is refused (:class:`OutputPathError`).
    Text files are written atomically (:mod:`mmembed.files`)."""
    cfg = config or SyntheticConfig()
    out = Path(out)
    _prepare(out)
    images = ImageWriter(out, cfg.image_size, cfg.noise)
    task_rows = [write_mmeb_task(out, images, cfg, task) for task in TASKS]
    write_tasks_yaml(out)
    write_muco(out, images, cfg)
    mbeir = write_mbeir(out, images, cfg)
    files = sorted(p for p in out.rglob("*") if p.suffix in (".jsonl", ".yaml", ".tsv", ".txt") and p.is_file())
    manifest = {
        "generator": GENERATOR, "version": VERSION, "seed": cfg.seed, "config": dataclasses.asdict(cfg),
        "tasks": task_rows, "mbeir": mbeir,
        "images": {"count": images.count, "pixels_sha256": images.digest.hexdigest()},
        "files": {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }
    write_text_lf(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out
