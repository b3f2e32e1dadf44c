"""Positive views built from one sentence or one document (the pair constructors of the SimCSE family).

* :func:`repeat_words`: ESimCSE's word repetition (a positive of a different length, against SimCSE's length bias).
* :func:`context_pairs`: CCP's neighbouring sentences of a document as (anchor, positive) pairs.

SimCSE's unsupervised rows (each sentence its own positive; the two passes differ by dropout only, and
:class:`~mmembed.losses.ContrastiveLoss` warns when they come out identical) are what
:func:`mmembed.data.formats.read_sentences` reads.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from .rows import Row, text_row

DUP_RATE = 0.32  # ESimCSE, BERT-base (run.sh)
MAX_DUP = 10  # ESimCSE caps the repetitions at 10


def repeat_words(text: str, rng: random.Random, dup_rate: float = DUP_RATE, max_dup: int = MAX_DUP,
                 protected: Collection[str] = ()) -> str:
    """``text`` with some words written twice ("I like this apple" -> "I I like this apple apple").

    As ESimCSE's word mode: ``n ~ randrange(min(max_dup, L, max(2, int(dup_rate * L))))`` words (``L`` words in
    all) are drawn without replacement and each is written twice. Words in ``protected`` (special tokens such as
    ``<|emb|>``) are never repeated. Works on the raw sentence, before any template, so template and chat tokens are
    never touched (ESimCSE's own code repeats sub-word ids between [CLS] and [SEP]; words keep the positive
    tokenizer-independent)."""
    words = text.split()
    candidates = [i for i, w in enumerate(words) if w not in protected]
    limit = min(max_dup, len(candidates), max(2, int(dup_rate * len(candidates))))
    if limit < 1:
        return text
    chosen = set(rng.sample(candidates, rng.randrange(limit)))
    return " ".join(w for i, word in enumerate(words) for w in ([word, word] if i in chosen else [word]))


def context_pairs(documents: Sequence[Sequence[str]], window: int = 1, groups: Sequence[int] | None = None
                  ) -> list[Row]:
    """CCP rows: each sentence with each neighbour at most ``window`` sentences away in its document. With
    ``groups`` (one id per document, e.g. its language) the rows carry ``"bank_group"`` for the memory banks."""
    if window < 1:
        raise ValueError(f"window {window}: give at least 1.")
    rows = []
    for d, sentences in enumerate(documents):
        for i, anchor in enumerate(sentences):
            for j in range(max(0, i - window), min(len(sentences), i + window + 1)):
                if j != i:
                    extra = {"bank_group": int(groups[d])} if groups is not None else {}
                    rows.append(text_row(anchor, sentences[j], **extra))
    return rows
