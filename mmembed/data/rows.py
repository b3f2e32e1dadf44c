"""The shapes of training rows, typed, and the small constructors every reader and method builds them with.

A *side* is one input: ``{"text": str | None, "image": str | None}`` (an image is a path already resolved inside
its image root; ``read_mmeb_train`` adds ``caption``). A training :class:`Row` has an ``anchor`` side, a
``positive`` (one side, or a list of several, the same number in every row of a dataset), and optionally
``negative`` (a list of sides; DebCSE's IPW triplets hold one side) and the keys some methods read:

| key | who writes it | who reads it |
|---|---|---|
| ``bank_group`` | CCP's context pairs (:func:`mmembed.data.views.context_pairs`) | the per-group memory banks |
| ``entry`` | DefSent's rows (:func:`mmembed.data.definitions.definition_rows`; no ``positive``) | the classifier |
| ``score`` | graded STS-B / SICK-R rows (``stsb``, ``sick_relatedness``) | DSE's ``cosine`` / ``cosent`` task |
| ``teacher_score`` | teacher-score files, the DSE score cache | DSE's distillation term |

Two formats have other rows: GRACE's :class:`GraceRow` (the policy's text, its query, an optional negative) and
MuCo's :class:`MultiTurnRow` (one image and K (query paraphrases, positive) turns). Rows are plain dicts (they go
straight into ``datasets.Dataset``); the TypedDicts document and type-check them.
"""

from __future__ import annotations

from typing import Any, TypedDict, Union

__all__ = ["CaptionedSide", "GraceRow", "MultiTurnRow", "Row", "Side", "Turn", "grace_row", "row", "sentences_of",
           "side", "text_row"]


class Side(TypedDict):
    """One input of a row: a text, an image path, or both (never neither)."""

    text: str | None
    image: str | None


class CaptionedSide(Side):
    """A side of ``read_mmeb_train``: with MuCo's generated caption (None when the file has none)."""

    caption: str | None


class _Anchor(TypedDict):
    anchor: Side


class Row(_Anchor, total=False):
    """A training row: ``anchor`` always; ``positive`` one side or a list; the other keys when their method uses
    them (see the module docstring)."""

    positive: Union[Side, list[Side]]  # noqa: UP007 - TypedDict fields are evaluated on Python 3.10
    negative: Union[list[Side], Side]  # noqa: UP007
    bank_group: int
    entry: int
    score: float
    teacher_score: float


class _GraceText(TypedDict):
    text: str
    query: str


class GraceRow(_GraceText, total=False):
    """A GRACE row: the policy writes its rationale for ``text`` (the positive); ``query`` and ``negative`` are
    embedded against it."""

    negative: str


class Turn(TypedDict):
    """One turn of a multi-turn row: the query's paraphrases, the positive text, the kind (or None)."""

    query: list[str]
    positive: str
    kind: str | None


class MultiTurnRow(TypedDict):
    """A MuCo multi-turn row: one image (a resolved path, or None) and its turns."""

    image: str | None
    pairs: list[Turn]


def side(text: str | None, image: str | None = None) -> Side:
    """``{"text": text, "image": image}``."""
    return {"text": text, "image": image}


def row(anchor: Side, positive: Side | list[Side] | None = None, negative: list[Side] | Side | None = None,
        **extra: Any) -> Row:
    """``{"anchor", "positive"?, "negative"?, **extra}`` in that key order; a ``positive`` or ``negative`` of None
    is left out (an empty negative list is kept as given)."""
    out: dict[str, Any] = {"anchor": anchor}
    if positive is not None:
        out["positive"] = positive
    if negative is not None:
        out["negative"] = negative
    out.update(extra)
    return out  # type: ignore[return-value]


def text_row(anchor: str, positives: list[str] | str, negative: str | None = None, **extra: Any) -> Row:
    """A text-only row: ``positives`` one text (-> one side) or a list (-> a list of sides); ``negative`` one text
    (-> a list of one side); ``extra`` keys (e.g. ``bank_group``, ``score``) after them."""
    return row(side(anchor), [side(p) for p in positives] if isinstance(positives, list) else side(positives),
               [side(negative)] if negative is not None else None, **extra)


def grace_row(text: str, query: str, negative: str | None = None) -> GraceRow:
    """``{"text", "query", "negative"?}``: a GRACE row."""
    out: dict[str, Any] = {"text": text, "query": query}
    if negative is not None:
        out["negative"] = negative
    return out  # type: ignore[return-value]


def sentences_of(parts: list[list[Row]]) -> list[str]:
    """Every distinct text of the rows (anchors, positives, negatives), in first-seen order."""
    seen: dict[str, None] = {}
    for rows in parts:
        for one in rows:
            for column in ("anchor", "positive", "negative"):
                sides = one.get(column) or []
                for each in sides if isinstance(sides, list) else [sides]:
                    if each.get("text"):
                        seen.setdefault(each["text"], None)
    return list(seen)
