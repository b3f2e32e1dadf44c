"""Elastic early exit: STS-B dev Spearman and encode throughput of a Starbucks-trained SmolLM2-135M at several
(layers, dimensions) cuts, against the full model, in one run.

It trains ``recipes/configs/starbucks_smollm2.yaml`` (supervised SimCSE on SICK triplets plus the Starbucks pairs,
60 steps of batch 16, LoRA r16, no chat template: the budget of ``bench/methods.py``) unless ``--trained`` names a
finished model, then for every cut ``layer x dim``:

- STS-B dev Spearman x 100 (cosine, SentEval protocol) of the trained model, and of the untrained one;
- encode throughput (sentences/s) over ``--sentences`` STS-B dev sentences, batch 32, best of ``--repeats`` timed
  rounds after a warm-up (the settings interleaved within a round), as a ratio against the full model measured in
  the same process (early exit runs only the
  first ``layer`` layers: :meth:`mmembed.backbone.Backbone.running_layers`).

Goal (issue #8): at half the layers, >= 1.8x throughput and <= 5 points below the full model's Spearman.

With ``--speed-only`` it only measures the throughput half, on the untrained model (the config's template and
pooling) at each cut's number of layers, without training or scoring, and prints a markdown table and a JSON line
``{"per_second": {layers: sentences/s}}``: what ``bench/suite.py`` runs.

    python bench/elastic.py [--steps 60] [--trained out/starbucks-smollm2/final] [--out bench/elastic.md]
    python bench/elastic.py --speed-only [--sentences 512 --repeats 3]
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONFIG = "recipes/configs/starbucks_smollm2.yaml"


def train(args: argparse.Namespace, folder: Path) -> tuple[Path, dict]:
    cmd = [sys.executable, "recipes/simcse.py", "--config", CONFIG, "--max_steps", str(args.steps),
           "--save_strategy", "no", "--output_dir", str(folder), "--eval_sts_file", "", "--disable_tqdm", "true",
           "--train_file", str(DATA / "sick")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"training failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    line = next(ln for ln in reversed(run.stdout.splitlines()) if ln.startswith("{'method'"))
    return folder / "final", ast.literal_eval(line)


def throughputs(model, sentences: list[str], layers: list[int], repeats: int) -> dict[int, float]:
    """Sentences/s at each number of layers: best of ``repeats`` rounds, the layers interleaved within a round so
    that load changes on a shared machine hit all of them."""
    best = {layer: float("inf") for layer in layers}
    for layer in layers:  # warm-up
        model.backbone.layer = layer
        model.encode(sentences[:32], batch_size=32)
    for _ in range(repeats):
        for layer in layers:
            model.backbone.layer = layer
            start = time.perf_counter()
            model.encode(sentences, batch_size=32)
            best[layer] = min(best[layer], time.perf_counter() - start)
    return {layer: len(sentences) / seconds for layer, seconds in best.items()}


def untrained_model():
    """The untrained default model, embedding the way the config trains it (its template and pooling)."""
    import mmembed
    from mmembed.defaults import base_model

    config = yaml.safe_load((ROOT / CONFIG).read_text())
    return mmembed.load(base_model(), template=mmembed.PromptTemplate(text=config["template_text"]),
                        pooling=config["pooling"])


def speed_only(args: argparse.Namespace, layers: list[int]) -> None:
    """Throughput at each early-exit depth on the untrained model (``--speed-only``, run by bench/suite.py)."""
    import torch

    from mmembed.eval.sts import read_sts_benchmark

    first, second, _ = read_sts_benchmark(args.stsb_dev)
    model = untrained_model()
    texts = list(dict.fromkeys(first + second))[:args.sentences]
    rates = throughputs(model, texts, layers, args.repeats)
    full = rates[layers[0]]
    print(f"untrained SmolLM2-135M ({CONFIG} template / pooling), {len(texts)} STS-B dev sentences, batch 32, "
          f"best of {args.repeats} interleaved rounds, {torch.get_num_threads()} torch threads")
    print()
    print("| layers | sentences/s | speed-up vs full |")
    print("|---|---|---|")
    for layer, rate in rates.items():
        print(f"| {layer} | {rate:.1f} | {rate / full:.2f}x |")
    print(json.dumps({"per_second": rates}))


def measure(path: str | None, cuts: list[tuple[int, int]], args: argparse.Namespace, speed: bool) -> dict:
    import mmembed
    from mmembed.eval.sts import read_sts_benchmark, spearman_of_pairs

    first, second, gold = read_sts_benchmark(args.stsb_dev)
    model = untrained_model() if path is None else mmembed.load(path)
    results = {}
    for layer, dim in cuts:
        model.backbone.layer = layer
        model.truncate_dim = dim
        spearman = spearman_of_pairs(model, first, second, gold)
        results[(layer, dim)] = {"spearman": spearman}
        print(f"  {'trained' if path else 'untrained'} {layer} x {dim}: STS-B dev {spearman:.2f}", flush=True)
    if speed:
        sentences = list(dict.fromkeys(first + second))[: args.sentences]
        model.truncate_dim = None
        rates = throughputs(model, sentences, sorted({layer for layer, _ in cuts}, reverse=True), args.repeats)
        for cut in cuts:
            results[cut]["per_second"] = rates[cut[0]]
        print("  sentences/s by layers: " + ", ".join(f"{k}: {v:.1f}" for k, v in rates.items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trained", default=None, help="a Starbucks-trained model folder (skip training)")
    parser.add_argument("--cuts", default="30x576,20x384,15x576,15x288,10x128",
                        help="layer x dim settings; the first is the full model")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stsb-dev", type=Path, default=DATA / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the throughput of the untrained model at each cut's layers (no training, no "
                             "STS-B scores; what bench/suite.py runs)")
    args = parser.parse_args()
    cuts = [tuple(int(x) for x in cut.split("x")) for cut in args.cuts.split(",")]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.speed_only:
        speed_only(args, sorted({layer for layer, _ in cuts}, reverse=True))
        return
    with tempfile.TemporaryDirectory() as tmp:
        summary = {}
        if args.trained is None:
            print(f"training {CONFIG} for {args.steps} steps ...", flush=True)
            trained, summary = train(args, Path(tmp) / "starbucks")
        else:
            trained = Path(args.trained)
        after = measure(str(trained), cuts, args, speed=True)
    before = measure(None, cuts, args, speed=False)
    full = cuts[0]
    import torch

    trained_for = f", {summary['train_seconds']:.0f} s" if summary else ""
    title = (f"Elastic early exit, SmolLM2-135M-Instruct, Starbucks training ({CONFIG}, {args.steps} steps"
             f"{trained_for}); STS-B dev Spearman x 100; encode throughput over {args.sentences} STS-B dev "
             f"sentences, batch 32, {torch.get_num_threads()} torch threads (`python bench/elastic.py`)")
    lines = [title, "", "| layers x dim | STS-B dev | vs full | untrained | sentences/s | speed-up |",
             "|---|---|---|---|---|---|"]
    for cut in cuts:
        a, b = after[cut], before[cut]
        lines.append(f"| {cut[0]} x {cut[1]} | {a['spearman']:.2f} | {a['spearman'] - after[full]['spearman']:+.2f} | "
                     f"{b['spearman']:.2f} | {a['per_second']:.1f} | "
                     f"{a['per_second'] / after[full]['per_second']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
