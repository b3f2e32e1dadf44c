"""Build the Quickstart's shipped data, ``recipes/data/wordnet/``, from WordNet 3.0 (deterministic: same input, same
bytes). The files are committed; this script only says exactly how they were made (data card:
``data_cards/wordnet_quickstart.md``).

    python recipes/data/build_wordnet.py [--source ../shared/data/wordnet/definitions.jsonl] [--out recipes/data/wordnet]

Input: JSON lines ``{"synset", "pos", "lemmas", "definition", "examples"}`` (WordNet 3.0 from Debian's
``wordnet-base``). Output:

- ``eval/`` (BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``): ``EVAL_LEMMAS`` words, each with
  2-3 senses that all have a usage example; a query is a sense's first usage example, the corpus holds the
  definitions of all their senses, the one relevant document is the query's own sense's definition.
- ``train.jsonl`` (GRACE rows ``{"query", "positive", "negative", "source"}``): query = a usage example, positive =
  its sense's definition, negative = the definition of another sense of one of its words (a hard negative); or, in
  about half the rows, the other way round (definition -> usage example, another sense's example as the negative),
  so that the policy learns rationales for both kinds of text the evaluation encodes.
  Training senses share no word with any evaluation sense (lowercased lemmas), so no evaluation word, sense or
  definition is seen in training.
- ``LICENSE``: the WordNet 3.0 licence, which asks for its notice on all copies.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

SEED = 27
EVAL_LEMMAS = 60
TRAIN_ROWS = 1000
MAX_WORDS = 20  # examples and definitions longer than this are left out (short prompts, quick rationales)

LICENCE = """WordNet Release 3.0

This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.

(Source: Debian's wordnet-base 1:3.0-37 package, debian/copyright, "License: WordNet3.0".)
"""


def usable(synset: dict) -> bool:
    """A sense whose first usage example and definition are short enough for a quick rationale; texts with a quote
    mark (quotations with an attribution such as ``"-LewisMumford``, glosses cut inside an example) are left out."""
    texts = (synset["definition"], synset["examples"][0]) if synset["examples"] else ()
    return bool(texts) and all(len(t.split()) <= MAX_WORDS and '"' not in t for t in texts)


def split(synsets: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(evaluation senses, training senses): whole words with 2-3 usable senses go to evaluation; training keeps the
    usable senses that share no lemma with any evaluation sense."""
    senses = defaultdict(list)
    for s in synsets:
        for lemma in {x.lower() for x in s["lemmas"]}:
            senses[lemma].append(s)
    candidates = sorted(w for w, ss in senses.items() if w.isalpha() and 2 <= len(ss) <= 3 and all(map(usable, ss)))
    chosen = rng.sample(candidates, EVAL_LEMMAS)
    evaluation = list({s["synset"]: s for w in sorted(chosen) for s in senses[w]}.values())
    held = {x.lower() for s in evaluation for x in s["lemmas"]}
    held_texts = {s["definition"] for s in evaluation} | {s["examples"][0] for s in evaluation}
    training = [s for s in synsets if usable(s) and not held & {x.lower() for x in s["lemmas"]}
                and s["definition"] not in held_texts and not held_texts & set(s["examples"])]
    return evaluation, training


def train_rows(training: list[dict], rng: random.Random) -> list[dict]:
    """One row per sampled sense with a hard negative from another training sense of one of its lemmas; half the
    rows (at random) go from usage example to definition, the others from definition to usage example."""
    senses = defaultdict(list)
    for s in training:
        for lemma in sorted({x.lower() for x in s["lemmas"]}):
            senses[lemma].append(s)
    rows = []
    for s in training:
        others = [o for lemma in sorted({x.lower() for x in s["lemmas"]}) for o in senses[lemma]
                  if o["synset"] != s["synset"] and o["definition"] != s["definition"]]
        if others:
            negative = others[rng.randrange(len(others))]
            if rng.random() < 0.5:
                rows.append({"query": s["examples"][0], "positive": s["definition"],
                             "negative": negative["definition"], "source": f"wordnet-3.0:{s['synset']}"})
            else:
                rows.append({"query": s["definition"], "positive": s["examples"][0],
                             "negative": negative["examples"][0], "source": f"wordnet-3.0:{s['synset']}"})
    rng.shuffle(rows)
    return rows[:TRAIN_ROWS]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build(source: Path, out: Path) -> dict:
    """Write the shipped files into ``out``; returns their counts."""
    synsets = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(SEED)
    evaluation, training = split(synsets, rng)
    rows = train_rows(training, rng)
    write_jsonl(out / "train.jsonl", rows)
    write_jsonl(out / "eval" / "corpus.jsonl", [{"_id": s["synset"], "text": s["definition"]} for s in evaluation])
    write_jsonl(out / "eval" / "queries.jsonl", [{"_id": f"q-{s['synset']}", "text": s["examples"][0]}
                                                 for s in evaluation])
    (out / "eval" / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{s['synset']}\t{s['synset']}\t1\n" for s in evaluation),
        encoding="utf-8")
    (out / "LICENSE").write_text(LICENCE, encoding="utf-8")
    return {"train_rows": len(rows), "eval_queries": len(evaluation), "eval_corpus": len(evaluation)}


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]  # the repository
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=root.parent / "shared" / "data" / "wordnet" /
                        "definitions.jsonl")
    parser.add_argument("--out", type=Path, default=root / "recipes" / "data" / "wordnet")
    args = parser.parse_args()
    print(json.dumps(build(args.source, args.out)))
