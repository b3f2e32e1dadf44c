"""Retrieval on local data: any query -> corpus set with qrels (BEIR layout), and TREC-QA answer selection.

BEIR layout: ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl`` (``{"_id", "text"}``) and
``qrels/<split>.tsv`` (``query-id  corpus-id  score``, after an optional header line). Queries use the model's ``query`` prompt and the
corpus its ``document`` prompt when it has them; a title is put before the text as ``"title text"`` (BEIR, mteb).
Metrics over the exact top-``depth`` ranking: nDCG@10 (main, linear gains), MAP, MRR@10, Recall@k.

TREC-QA (``qtext,label,atext`` CSV): each question ranks its own candidate sentences; MAP and MRR@10. The usual
"clean" setting drops questions without any correct answer (AP undefined) and questions whose candidates are all
correct (every ranking scores 1); both counts are recorded.

The readers check every line before anything is encoded (BEIR folders: :mod:`mmembed.eval.beir`, the reader shared
with mteb's local tasks): a line that is not UTF-8, a missing or non-string field, an empty query, document or answer
sentence, a duplicate id, a relevance score that is not a finite number, or a qrels line naming an unknown query or
document raises :class:`RetrievalDataError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..textio import read_text
from .beir import read_beir_folder
from .encoding import EmbeddingCache, encode_side
from .metrics import average_precision, mean, ndcg_at_k, rank, recall_at_k, reciprocal_rank
from .search import topk_search


class RetrievalDataError(DataError):
    """A retrieval file that cannot be used; the message names the file and line."""


def read_beir(folder: str | Path, split: str = "test") -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """``(queries, corpus, qrels)``: ``{qid: text}``, ``{doc_id: "title text"}``, ``{qid: {doc_id: relevance}}``
    (:func:`~mmembed.eval.beir.read_beir_folder`, text only; a qrels line naming an unknown id is an error).

    Only queries with at least one judged document are kept (as BEIR and MTEB do).
    """
    data = read_beir_folder(folder, split, error=RetrievalDataError)
    corpus = {doc: f"{e.title} {e.text or ''}".strip() for doc, e in data.corpus.items()}
    queries = {qid: e.text for qid, e in data.queries.items() if qid in data.qrels}
    return queries, corpus, data.qrels


def retrieval_scores(rankings: list[list[str]], relevant: list[dict[str, int]],
                     k_values: tuple[int, ...] = (1, 3, 5, 10, 100)) -> dict[str, float]:
    """nDCG@k, Recall@k, MAP (over the given rankings) and MRR@10, averaged over queries, x 100."""
    out: dict[str, float] = {}
    for k in k_values:
        out[f"ndcg@{k}"] = 100 * float(np.mean([ndcg_at_k(r, rel, k) for r, rel in zip(rankings, relevant)]))
        out[f"recall@{k}"] = 100 * float(np.mean([recall_at_k(r, rel, k) for r, rel in zip(rankings, relevant)]))
    out["map"] = 100 * float(np.mean([average_precision(r, rel) for r, rel in zip(rankings, relevant)]))
    out["mrr@10"] = 100 * float(np.mean([reciprocal_rank(r, rel, 10) for r, rel in zip(rankings, relevant)]))
    return out


def evaluate_retrieval(embedder: Any, folder: str | Path, *, split: str = "test", depth: int = 1000,
                       k_values: tuple[int, ...] = (1, 3, 5, 10, 100), seed: int = 0, batch_size: int = 32,
                       name: str | None = None, device: str | None = None, show_progress_bar: bool | None = None):
    """Score ``embedder`` on a BEIR-layout folder; returns a :class:`~mmembed.eval.report.Report`."""
    from .report import Report, describe_model, file_hashes

    folder = Path(folder)
    queries, corpus, qrels = read_beir(folder, split)
    if not queries:
        raise RetrievalDataError(f"{folder}: no query has a judged document in qrels/{split}.tsv.")
    doc_ids = list(corpus)
    order = np.random.default_rng(seed).permutation(len(doc_ids))  # ties never favour the corpus file's order
    doc_vectors = encode_side(embedder, [corpus[doc_ids[i]] for i in order], "document", batch_size=batch_size,
                              show_progress_bar=show_progress_bar)
    qids = list(queries)
    query_vectors = encode_side(embedder, [queries[q] for q in qids], "query", batch_size=batch_size,
                                show_progress_bar=show_progress_bar)
    _, index = topk_search(query_vectors, doc_vectors, k=min(depth, len(doc_ids)), device=device)
    rankings = [[doc_ids[order[j]] for j in row] for row in index.tolist()]
    scores = retrieval_scores(rankings, [qrels[q] for q in qids], k_values)
    task = name or folder.name
    return Report(
        suite="retrieval", metric="ndcg@10 x 100",
        tasks={task: {"score": scores["ndcg@10"], "metric": "ndcg@10", "split": split, "n": len(qids),
                      "corpus_size": len(doc_ids), **scores}},
        model=describe_model(embedder),
        protocol={"similarity": "cosine", "search": "exact", "depth": depth, "gains": "linear (trec_eval)",
                  "document_text": "title text", "corpus_order": "seeded random permutation"},
        data={"root": str(folder), "files": file_hashes([folder / "corpus.jsonl", folder / "queries.jsonl",
                                                         folder / "qrels" / f"{split}.tsv"])},
        seeds={"corpus_order": seed},
    )


def _csv_rows(reader: csv.DictReader, path: str | Path):
    """The rows of ``reader``; a malformed line (e.g. a NUL byte) raises with file:line."""
    try:
        yield from reader
    except csv.Error as exc:
        raise RetrievalDataError(f"{path}:{reader.line_num}: not a readable CSV line ({exc}).") from None


def read_trecqa(path: str | Path) -> list[tuple[str, list[str], list[int]]]:
    """``(question, candidate sentences, labels)`` per question, in file order, from a ``qtext,label,atext`` CSV."""
    questions: dict[str, tuple[list[str], list[int]]] = {}
    if not Path(path).is_file():
        raise RetrievalDataError(f"TREC-QA file {path} not found (a CSV with the header qtext,label,atext).")
    reader = csv.DictReader(io.StringIO(read_text(path, RetrievalDataError), newline=""))
    if not reader.fieldnames or not {"qtext", "label", "atext"} <= set(reader.fieldnames):
        raise RetrievalDataError(f"{path}:1: header must name qtext, label and atext.")
    for row in _csv_rows(reader, path):
        where = f"{path}:{reader.line_num}"
        if row["label"] not in ("0", "1"):
            raise RetrievalDataError(f"{where}: label {row['label']!r} must be 0 or 1.")
        if not (row["qtext"] or "").strip() or not (row["atext"] or "").strip():
            raise RetrievalDataError(f"{where}: empty question or answer sentence; remove the line or fill it in.")
        sentences, labels = questions.setdefault(row["qtext"], ([], []))
        sentences.append(row["atext"])
        labels.append(int(row["label"]))
    return [(q, s, lab) for q, (s, lab) in questions.items()]


def evaluate_trecqa(embedder: Any, path: str | Path, *, clean: bool = True, seed: int = 0, batch_size: int = 32,
                    show_progress_bar: bool | None = None):
    """MAP and MRR@10 of answer-sentence selection on a TREC-QA CSV (per-question candidate lists)."""
    from .report import Report, describe_model, file_hashes

    data = read_trecqa(path)
    no_answer = [q for q in data if not any(q[2])]
    all_answer = [q for q in data if all(q[2])]
    kept = [q for q in data if any(q[2]) and (not clean or not all(q[2]))]
    if not kept:
        raise RetrievalDataError(f"{path}: no question has a correct answer sentence.")
    queries = EmbeddingCache(embedder, "query", batch_size=batch_size, show_progress_bar=show_progress_bar)
    documents = EmbeddingCache(embedder, "document", batch_size=batch_size, show_progress_bar=show_progress_bar)
    query_vectors = queries.get([q for q, _, _ in kept])
    documents.get(list(dict.fromkeys(s for _, sentences, _ in kept for s in sentences)))
    rng = np.random.default_rng(seed)
    aps, rrs = [], []
    for q_vector, (_, sentences, labels) in zip(query_vectors, kept):
        ranking = rank(documents.get(sentences) @ q_vector, rng).tolist()
        relevant = {i for i, label in enumerate(labels) if label}
        aps.append(average_precision(ranking, relevant))
        rrs.append(reciprocal_rank(ranking, relevant, 10))
    scores = {"map": 100 * mean(aps), "mrr@10": 100 * mean(rrs)}
    return Report(
        suite="trecqa", metric="MAP x 100",
        tasks={"TREC-QA": {"score": scores["map"], "metric": "map", "n": len(kept), **scores}},
        model=describe_model(embedder),
        protocol={"setting": "clean" if clean else "raw (all-correct questions kept)", "similarity": "cosine",
                  "pool": "each question's own candidate sentences", "tie_breaking": "seeded random",
                  "dropped_no_answer": len(no_answer), "dropped_all_answers": len(all_answer) if clean else 0},
        data={"root": str(path), "files": file_hashes([path])},
        seeds={"tie_breaking": seed},
    )
