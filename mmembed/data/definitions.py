"""Dictionary entries for DefSent / DefSent+: WordNet definitions grouped by the word or phrase they define.

The input is ``definitions.jsonl`` (one synset a line: ``{"synset", "pos", "lemmas": [...], "definition",
"examples": [...]}``, see ``data_cards/wordnet.md``). An *entry* is a lemma as WordNet writes it (multi-word lemmas
such as "physical entity" are entries too: DefSent+'s "unlimited entries"); its definitions are those of every synset
that lists it, in file order, each once. An entry therefore mixes the senses and parts of speech of its word, as a
dictionary headword does.

Training rows are one per (entry, definition): ``{"anchor": {"text": definition, "image": None}, "entry": index}``,
which :class:`~mmembed.data.collator.ContrastiveCollator` turns into ``{"anchor": tokenized, "entry_ids": ...}``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .collator import content_key
from .formats import DataError
from .rows import Row, row, side

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass(frozen=True)
class Entry:
    """A dictionary entry: its headword (a lemma, possibly several words) and its definitions."""

    name: str
    definitions: tuple[str, ...]


def _record(line: str, where: str) -> tuple[list[str], str]:
    """The lemmas and definition of one ``definitions.jsonl`` line; a bad line raises with its place."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg}); each line is one synset "
                        f"{{\"lemmas\": [...], \"definition\": ...}}.") from exc
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'lemmas' and 'definition', got "
                        f"{type(record).__name__}.")
    lemmas, definition = record.get("lemmas"), record.get("definition")
    if not isinstance(lemmas, list) or not lemmas or not all(isinstance(x, str) and x.strip() for x in lemmas):
        raise DataError(f"{where}: 'lemmas' must be a non-empty list of non-empty strings, got {lemmas!r}.")
    if not isinstance(definition, str) or not definition.strip():
        raise DataError(f"{where}: 'definition' must be a non-empty string, got {definition!r}.")
    return [x.strip() for x in lemmas], " ".join(definition.split())


def read_entries(path: str | Path, *, max_entries: int | None = None, min_definitions: int = 1,
                 seed: int = 0) -> list[Entry]:
    """Entries of a WordNet ``definitions.jsonl`` file, in the order their lemma first appears.

    Args:
        path: the JSON lines file.
        max_entries: keep a seeded random sample of this many of the qualifying entries (kept in file order);
            None keeps all. Building the entry embeddings encodes every definition of every kept entry.
        min_definitions: keep entries with at least this many (distinct) definitions.
        seed: the sample's seed.

    A line that is not a synset record raises :class:`~mmembed.data.formats.DataError` naming ``file:line``.
    """
    if min_definitions < 1:
        raise ValueError(f"min_definitions={min_definitions}; it must be at least 1.")
    if max_entries is not None and max_entries < 1:
        raise ValueError(f"max_entries={max_entries}; give a positive number, or None for every entry.")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"definitions file {path} does not exist (WordNet: ../shared/data/wordnet/definitions.jsonl).")
    by_lemma: dict[str, dict[str, None]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            lemmas, definition = _record(line, f"{path}:{number}")
            for lemma in lemmas:
                by_lemma.setdefault(lemma, {}).setdefault(definition, None)
    entries = [Entry(name, tuple(defs)) for name, defs in by_lemma.items() if len(defs) >= min_definitions]
    if not entries:
        raise DataError(f"{path}: no entry has {min_definitions} or more definitions; lower min_definitions.")
    if max_entries is not None and max_entries < len(entries):
        keep = sorted(random.Random(seed).sample(range(len(entries)), max_entries))
        entries = [entries[i] for i in keep]
    return entries


def definition_rows(entries: list[Entry]) -> list[Row]:
    """One training row per (entry, definition): ``{"anchor": {"text", "image"}, "entry": entry index}``."""
    return [row(side(d), entry=i) for i, e in enumerate(entries) for d in e.definitions]


def definition_dataset(entries: list[Entry]) -> Dataset:
    """The rows of :func:`definition_rows` as a ``datasets.Dataset`` with the ``keys`` column the no-duplicates
    sampler reads (the definition's content key: a definition shared by two entries never meets itself in a
    batch)."""
    from datasets import Dataset

    rows = definition_rows(entries)
    return Dataset.from_list([{**row, "keys": [content_key(row["anchor"]["text"], None)]} for row in rows])
