"""LCO's central claim on the synthetic benchmark: does text-only contrastive training of the language model raise
image-text Precision@1 over the untrained model?

Data (text only, from the synthetic set's MuCo caption packs ``<syn>/muco/caption.jsonl``, so no evaluation scene is
seen): each caption is parsed back into its scene (``mmembed.synthetic.scenes.parse_caption``); the anchor is the
caption of the same scene with its objects listed in another order, the positive the caption itself, the hard
negative the caption of one random single edit (a colour, shape, size, position, an object added or removed, the
word). Training: ``recipes/lco.py`` (InfoNCE with the hard negative, tau 0.03, LoRA on the language model only, the
vision tower untouched) with LCO's templates. Scores: MMEB-format Precision@1 of ``<syn>/mmeb_eval`` for every task,
before and after, with the same templates and pooling.

    python bench/lco_synthetic.py --model out/muco/vl --syn out/muco/syn [--steps 300] [--out out/lco-syn]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LCO_TEMPLATES = {"text": "{text}\nSummarize the above text in one word:",
                 "image": "{image}\nSummarize the above image in one word:",
                 "text_image": "{image}{text}\nSummarize the above in one word:"}


def caption_triplets(captions_file: Path, out_file: Path, seed: int = 0) -> int:
    """Write LCO triplets (anchor: the caption reordered, positive: the caption, negative: one edit) as JSON lines;
    returns how many. A caption with a single object group is its own anchor."""
    from mmembed.files import write_text
    from mmembed.synthetic.scenes import _GROUP_RE, caption, distinct_edits, parse_caption

    rng = np.random.default_rng(seed)
    rows = []
    for line in captions_file.read_text().splitlines():
        text = json.loads(line)["pairs"][0]["positive"]
        objects, sep, word = text.partition("; ") if "; " in text else (text, "", "")
        if objects.startswith("the word '"):
            objects, sep, word = "", "", objects
        groups = [m.group(0) for m in _GROUP_RE.finditer(objects)]
        reordered = ", ".join(groups[i] for i in rng.permutation(len(groups)))
        anchor = f"{reordered}{sep}{word}" if reordered else word
        negative, _ = distinct_edits(rng, parse_caption(text), 1)[0]
        rows.append({"anchor": anchor, "positive": text, "negative": caption(negative)})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_text(out_file, "".join(json.dumps(r) + "\n" for r in rows))  # temporary name, then renamed
    return len(rows)


def mmeb_scores(model: str, syn: Path) -> dict[str, float]:
    """MMEB-format Precision@1 x 100 per task (and overall) of ``model`` under LCO's templates, last-token pooling."""
    import mmembed
    from mmembed.eval.mmeb import evaluate_mmeb
    from mmembed.inputs import PromptTemplate

    embedder = mmembed.load(model, template=PromptTemplate(chat=True, **LCO_TEMPLATES), pooling="last",
                            dtype="float32")
    report = evaluate_mmeb(embedder, syn / "mmeb_eval", image_root=syn, show_progress_bar=False)
    return {"overall": round(report.summary["overall_present"], 2),
            **{task: round(entry["score"], 2) for task, entry in report.tasks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the VLM folder (e.g. mmembed.testing.build_tiny_qwen2_vl)")
    parser.add_argument("--syn", type=Path, required=True, help="the synthetic benchmark folder (mmembed synthetic)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "lco-syn")
    args = parser.parse_args()
    triplets = args.out / "caption_triplets.jsonl"
    print(f"{caption_triplets(args.syn / 'muco' / 'caption.jsonl', triplets)} text triplets -> {triplets}")
    before = mmeb_scores(args.model, args.syn)
    print("untrained:", json.dumps(before))
    cmd = [sys.executable, str(ROOT / "recipes" / "lco.py"), "--model_name_or_path", args.model,
           "--train_file", str(triplets), "--train_format", "triplets", "--eval_sts_file", "",
           "--eval_before_training", "false", "--lora_r", "16", "--lora_alpha", "32", "--num_train_epochs", "1",
           "--max_steps", str(args.steps), "--learning_rate", str(args.learning_rate), "--logging_steps", "50",
           "--output_dir", str(args.out / "run"), "--disable_tqdm", "true"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    after = mmeb_scores(str(args.out / "run" / "final"), args.syn)
    print("after LCO (text only):", json.dumps(after))
    print(json.dumps({"before": before, "after": after}))


if __name__ == "__main__":
    main()
