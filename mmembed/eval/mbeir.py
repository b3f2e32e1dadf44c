"""M-BEIR (UniIR) evaluation: instructed retrieval over local (per-task) and global (union) candidate pools.

Data root layout (``TIGER-Lab/M-BEIR``)::

    query/<split>/mbeir_<name>_<split>.jsonl        qid, query_txt, query_img_path, query_modality, pos_cand_list, task_id
    cand_pool/local/mbeir_<name>_cand_pool.jsonl    did, txt, img_path, modality
    cand_pool/global/mbeir_union_<split>_cand_pool.jsonl
    qrels/<split>/mbeir_<name>_<split>_qrels.txt    "qid 0 did relevance task_id" (else pos_cand_list is used)
    instructions/query_instructions.tsv             query_modality, cand_modality, task, dataset_id, prompt_1..4

Protocol (UniIR ``mbeir_dataset.py`` / ``mbeir_retriever.py``): the query text is ``format_string(f"{instruction}
{query_txt}")`` with an instruction drawn (seeded) from those of (dataset id, query modality, modality of the
positive candidates); candidate texts are ``format_string(txt)``. Cosine scores, exact top-k. The metric is UniIR's
"Recall@k" = 1 if any positive is in the top k (:func:`~mmembed.eval.metrics.hit_at_k`): Recall@5 for every task but
Fashion200K and FashionIQ (Recall@10). Averages over tasks per pool (M-BEIR_local, M-BEIR global).

Pools are embedded once per run (in RAM, a candidate shared by several pools is encoded once) or, with
``embeddings_dir``, written to one ``.npy`` file per pool in chunks: an interrupted run resumes where it stopped (the
files are reused only for the same model, weights fingerprint and image root), and a pool of millions needs no RAM
for its embeddings, as scoring reads blocks (:func:`~mmembed.eval.search.topk_search`). The pool is scored in a
seeded random order, so exact ties never favour the order of the pool file. Query samples, instruction choices and
pool orders come from one random stream per (seed, task[, pool]), so they do not depend on which tasks ran.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed import run_on_main
from ..errors import DataError
from ..textio import iter_jsonl, resolve_image
from .encoding import encode_side
from .metrics import hit_at_k, mean
from .resume import load_state, save_state
from .search import NpyFile, topk_search

logger = logging.getLogger(__name__)

RECALL_AT_10 = ("fashion200k", "fashioniq")


class MBEIRDataError(DataError):
    """An M-BEIR file or record that cannot be used; the message names the file and line."""


def format_string(text: str | None) -> str:
    """UniIR's text normalisation: strip, drop carriage returns and surrounding quotes, capitalise the first
    character, end with a period unless it ends with . ? or !."""
    text = (text or "").replace("\r", "").strip().strip('"')
    if text:
        text = text[0].upper() + text[1:]
        text = text if text[-1] in ".?!" else text + "."
    return text


def read_instructions(path: Path) -> dict[str, list[str]]:
    """``{"<dataset_id>, <query_modality>, <cand_modality>": [prompts]}`` from UniIR's instruction TSV."""
    table: dict[str, list[str]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[1:], start=2):
        parts = line.strip().split("\t")
        if not line.strip():
            continue
        if len(parts) < 5:
            raise MBEIRDataError(f"{path}:{number}: expected query_modality, cand_modality, task, dataset_id and "
                                 f"at least one prompt.")
        table[f"{parts[3]}, {parts[0]}, {parts[1]}"] = [p for p in parts[4:] if p]
    return table


def read_qrels(path: Path) -> dict[str, set[str]]:
    qrels: dict[str, set[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 4:
            raise MBEIRDataError(f"{path}:{number}: expected 'qid 0 did relevance [task_id]'.")
        try:
            relevance = float(parts[3])
        except ValueError:
            raise MBEIRDataError(f"{path}:{number}: relevance {parts[3]!r} is not a number.") from None
        if relevance > 0:
            qrels.setdefault(parts[0], set()).add(parts[2])
    return qrels


def discover_tasks(root: Path, split: str = "test") -> list[str]:
    """Task names (e.g. ``cirr_task7``) of the query files under ``root/query/<split>``."""
    pattern = re.compile(rf"mbeir_(.+)_{re.escape(split)}\.jsonl$")
    return sorted(m.group(1) for p in (root / "query" / split).glob("*.jsonl") if (m := pattern.match(p.name)))


def recall_k(task: str) -> int:
    """The k of a task's main metric: 10 for Fashion200K and FashionIQ, 5 otherwise."""
    return 10 if task.lower().startswith(RECALL_AT_10) else 5


class _Pools:
    """Candidate records by did, and their embeddings computed once (in RAM, or in .npy files on disk)."""

    def __init__(self, embedder: Any, image_root: Path, batch_size: int, embeddings_dir: Path | None,
                 model_key: str = "", chunk: int = 8192, show_progress_bar: bool | None = None):
        self.embedder, self.image_root, self.batch_size = embedder, image_root, batch_size
        self.model_key = model_key  # saved embeddings are reused only for the same model, weights and image root
        self.embeddings_dir, self.chunk, self.show_progress_bar = embeddings_dir, chunk, show_progress_bar
        self.records: dict[str, dict] = {}
        self.vectors: dict[str, np.ndarray] = {}

    def load(self, path: Path) -> list[str]:
        dids = []
        for where, record in iter_jsonl(path):
            did = record.get("did")
            if not did or not (record.get("txt") or record.get("img_path")):
                raise MBEIRDataError(f"{where}: a candidate needs a did and a txt or img_path.")
            self.records.setdefault(did, {**record, "where": where})
            dids.append(did)
        return dids

    def to_input(self, did: str) -> dict:
        record = self.records[did]
        item: dict[str, Any] = {}
        if record.get("txt"):
            item["text"] = format_string(record["txt"])
        if record.get("img_path"):
            item["image"] = resolve_image(record["img_path"], self.image_root, record["where"])
        return item

    def _encode(self, dids: list[str]) -> np.ndarray:
        return encode_side(self.embedder, [self.to_input(d) for d in dids], "document", batch_size=self.batch_size,
                           show_progress_bar=self.show_progress_bar)

    def embed(self, name: str, dids: list[str]) -> np.ndarray | NpyFile:
        """``(len(dids), dim)`` embeddings (an :class:`~mmembed.eval.search.NpyFile` read block by block when
        ``embeddings_dir`` is set)."""
        if self.embeddings_dir is None:
            new = [d for d in dict.fromkeys(dids) if d not in self.vectors]
            if new:
                self.vectors.update(zip(new, self._encode(new)))
            return np.stack([self.vectors[d] for d in dids])
        array_path, state_path = self.embeddings_dir / f"{name}.npy", self.embeddings_dir / f"{name}.progress.json"
        state = run_on_main(lambda: self._open_array(array_path, state_path, _hash([self.model_key, *dids]),
                                                     len(dids)))  # on several processes: the main one's files
        if state["done"] < len(dids):
            for start in range(state["done"], len(dids), self.chunk):
                vectors = self._encode(dids[start:start + self.chunk])
                state["done"] = min(len(dids), start + self.chunk)
                run_on_main(functools.partial(_write_rows, array_path, start, vectors, state_path, state))
        else:
            logger.info("reusing the embeddings of %s in %s", name, array_path)
        return NpyFile(array_path)

    def _open_array(self, array_path: Path, state_path: Path, key: str, rows: int) -> dict[str, Any]:
        """The progress of the embeddings in ``array_path``; a new zero array (and progress) when they belong to
        another model or pool, or are absent."""
        array_path.parent.mkdir(parents=True, exist_ok=True)
        state, stale = load_state(state_path, key)
        if state is None or not array_path.is_file():
            if state is not None or stale:
                logger.info("%s holds embeddings of another model or pool: computing them again", array_path)
            state = {"key": key, "done": 0}
            np.lib.format.open_memmap(array_path, mode="w+", dtype=np.float32,
                                      shape=(rows, self.embedder.embedding_dim)).flush()
        return state


def _write_rows(array_path: Path, start: int, vectors: np.ndarray, state_path: Path, state: dict[str, Any]) -> None:
    """Write ``vectors`` at row ``start`` of the ``.npy`` file, then the progress ``state`` that counts them."""
    out = np.load(array_path, mmap_mode="r+")
    out[start:start + len(vectors)] = vectors
    out.flush()
    del out
    save_state(state_path, state)


def _hash(dids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(dids).encode()).hexdigest()


@dataclass(frozen=True)
class _Run:
    """The settings of one M-BEIR run and what every task shares (the candidate store, the global pool)."""

    embedder: Any
    root: Path
    split: str
    pools: tuple[str, ...]
    image_root: Path
    instruction_path: Path
    table: dict[str, list[str]] | None  # None: no instructions
    seed: int
    k_values: tuple[int, ...]
    max_queries: int | None
    batch_size: int
    block_size: int
    device: str | None
    show_progress_bar: bool | None
    store: _Pools
    global_dids: list[str] | None
    global_vectors: np.ndarray | NpyFile | None


def _instruction(run: _Run, table: dict[str, list[str]], q: dict, listed: list[str], positives: set[str], where: str,
                 rng: np.random.Generator) -> str:
    """A seeded choice among the instructions of (dataset id, query modality, modality of the positive candidates)."""
    # UniIR: the positive of the query's own dataset names the candidate modality (OVEN / INFOSEEK)
    dataset = str(q.get("qid", "")).split(":")[0]
    own = [d for d in listed if d.split(":")[0] == dataset and d in run.store.records] or sorted(positives)
    key = f"{dataset}, {q.get('query_modality')}, {run.store.records[own[0]].get('modality')}"
    if key not in table:
        raise MBEIRDataError(f"{where}: no instruction for '{key}' in {run.instruction_path}.")
    return table[key][rng.integers(len(table[key]))]


def _queries(run: _Run, records: list[tuple[str, dict]], qrels: dict[str, set[str]] | None,
             rng: np.random.Generator) -> tuple[list[dict], list[set[str]]]:
    """The model inputs of the query records (instructed, normalised text; image) and their positive candidates."""
    inputs, relevant = [], []
    for where, q in records:
        listed = list(q.get("pos_cand_list") or [])
        positives = (qrels.get(q.get("qid")) if qrels is not None else None) or set(listed)
        if not positives:
            raise MBEIRDataError(f"{where}: query {q.get('qid')} has no positive candidate.")
        unknown = [d for d in positives if d not in run.store.records]
        if unknown:
            raise MBEIRDataError(f"{where}: positive candidate(s) {unknown[:3]} are in no loaded pool.")
        text = q.get("query_txt") or ""
        if run.table is not None:
            text = f"{_instruction(run, run.table, q, listed, positives, where, rng)} {text}"
        item: dict[str, Any] = {}
        if format_string(text):
            item["text"] = format_string(text)
        if q.get("query_img_path"):
            item["image"] = resolve_image(q["query_img_path"], run.image_root, where)
        if not item:
            raise MBEIRDataError(f"{where}: query has neither text nor image.")
        inputs.append(item)
        relevant.append(positives)
    return inputs, relevant


def _rank(run: _Run, query_vectors: np.ndarray, dids: list[str], vectors: np.ndarray | NpyFile,
          rng: np.random.Generator) -> list[list[str]]:
    """The top candidates (dids) of each query, the pool scored in a seeded random order."""
    blocks = _shuffled_blocks(len(dids), run.block_size, rng)  # ties never favour the pool file's order
    order = np.concatenate([start + perm for start, perm in blocks])
    shuffled = (np.asarray(vectors[start:start + len(perm)])[perm] for start, perm in blocks)
    _, index = topk_search(query_vectors, shuffled, k=max(max(run.k_values), 10), block_size=run.block_size,
                           device=run.device,
                           show_progress_bar=run.show_progress_bar is not False and len(dids) >= 200_000)
    return [[dids[order[j]] for j in row] for row in index.tolist()]


def _evaluate_task(run: _Run, name: str, results: dict[str, dict[str, Any]], missing: dict[str, str],
                   files_read: list[Path]) -> None:
    """Score one task on each of its pools: adds ``"<task> [<pool>]"`` entries to ``results`` (or ``missing``)."""
    root, split = run.root, run.split
    query_path = root / "query" / split / f"mbeir_{name}_{split}.jsonl"
    if not query_path.is_file():
        missing[name] = f"{query_path} not found"
        return
    local_path = root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl"
    local_dids = run.store.load(local_path) if "local" in run.pools and local_path.is_file() else None
    scored = {"local": local_dids, "global": run.global_dids}
    for pool_name in run.pools:
        if scored[pool_name] is None:
            missing[f"{name} [{pool_name}]"] = f"no {pool_name} candidate pool file"
    if local_dids is None and run.global_dids is None:
        return
    qrels_path = root / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt"
    qrels = read_qrels(qrels_path) if qrels_path.is_file() else None
    files_read.extend(p for p in (query_path, local_path, qrels_path) if p.is_file())
    records = list(iter_jsonl(query_path))
    rng = np.random.default_rng([run.seed, zlib.crc32(name.encode())])  # per task: independent of the task list
    if run.max_queries is not None and len(records) > run.max_queries:
        records = [records[i] for i in sorted(rng.choice(len(records), run.max_queries, replace=False))]
    inputs, relevant = _queries(run, records, qrels, rng)
    query_vectors = encode_side(run.embedder, inputs, "query", batch_size=run.batch_size,
                                show_progress_bar=run.show_progress_bar)
    k_main = recall_k(name)
    for pool_index, pool_name in enumerate(("local", "global")):
        dids = scored[pool_name]
        if pool_name not in run.pools or dids is None:
            continue
        vectors = run.store.embed(f"local_{name}", dids) if pool_name == "local" else run.global_vectors
        ranked = _rank(run, query_vectors, dids, vectors,
                       np.random.default_rng([run.seed, zlib.crc32(name.encode()), pool_index]))
        recalls = {f"recall@{k}": 100 * float(np.mean([hit_at_k(r, rel, k) for r, rel in zip(ranked, relevant)]))
                   for k in sorted(set(run.k_values) | {k_main})}
        results[f"{name} [{pool_name}]"] = {"score": recalls[f"recall@{k_main}"], "metric": f"recall@{k_main}",
                                            "pool": pool_name, "n": len(records), "pool_size": len(dids), **recalls}


def _summary(results: dict[str, dict[str, Any]], pools: tuple[str, ...], names: list[str]) -> dict[str, Any]:
    """Per pool: the average over every task (None unless all ran), over the tasks present, and how many ran."""
    summary: dict[str, Any] = {}
    for pool in pools:
        scores = [r["score"] for r in results.values() if r["pool"] == pool]
        summary[f"{pool}_avg"] = mean(scores) if len(scores) == len(names) else None  # only over every task
        summary[f"{pool}_avg_present"] = mean(scores)
        summary[f"{pool}_tasks_present"] = f"{len(scores)}/{len(names)}"
    return summary


def evaluate_mbeir(embedder: Any, data_root: str | Path, *, tasks: list[str] | None = None,
                   pools: tuple[str, ...] = ("local", "global"), split: str = "test",
                   image_root: str | Path | None = None, instructions: bool = True, seed: int = 0,
                   k_values: tuple[int, ...] = (1, 5, 10), max_queries: int | None = None, batch_size: int = 16,
                   block_size: int = 65536, embeddings_dir: str | Path | None = None, device: str | None = None,
                   show_progress_bar: bool | None = None):
    """Score ``embedder`` on M-BEIR; returns a :class:`~mmembed.eval.report.Report` with one entry per (task, pool)."""
    from .report import Report, describe_model, file_hashes

    root = Path(data_root)
    image_root = Path(image_root) if image_root is not None else root
    names = tasks or discover_tasks(root, split)
    if not names:
        raise MBEIRDataError(f"no query files {root}/query/{split}/mbeir_<task>_{split}.jsonl found.")
    instruction_path = root / "instructions" / "query_instructions.tsv"
    table = read_instructions(instruction_path) if instructions else None
    model_info = describe_model(embedder)
    model_key = json.dumps([model_info, str(image_root.resolve())], sort_keys=True, default=str)
    store = _Pools(embedder, image_root, batch_size, Path(embeddings_dir) if embeddings_dir else None,
                   model_key=model_key, show_progress_bar=show_progress_bar)
    files_read = [instruction_path] if instructions else []
    global_path = root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl"
    global_dids = store.load(global_path) if "global" in pools and global_path.is_file() else None
    if global_dids is not None:
        files_read.append(global_path)
    global_vectors = store.embed(f"global_{split}", global_dids) if global_dids is not None else None
    run = _Run(embedder, root, split, pools, image_root, instruction_path, table, seed, k_values, max_queries,
               batch_size, block_size, device, show_progress_bar, store, global_dids, global_vectors)
    results: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for name in names:
        _evaluate_task(run, name, results, missing, files_read)
    if not results:
        raise MBEIRDataError(f"no M-BEIR task could be scored under {root}: " + "; ".join(missing.values()))
    return Report(
        suite="mbeir", metric="recall@5 (recall@10 for Fashion200K, FashionIQ) x 100", tasks=results,
        summary=_summary(results, pools, names), missing=missing, model=model_info,
        protocol={"recall": "hit: any positive in the top k (UniIR)", "instructions": instructions,
                  "instruction_choice": "seeded random among the (dataset, query modality, candidate modality) ones",
                  "text_normalisation": "UniIR format_string", "similarity": "cosine", "search": "exact, blocked",
                  "pool_order": "seeded random permutation", "split": split, "max_queries": max_queries,
                  "random_streams": "one per (seed, task[, pool]): independent of the tasks and pools run"},
        data={"root": str(root), "image_root": str(image_root), "files": file_hashes(files_read)},
        seeds={"instructions_query_sample_and_pool_order": seed},
    )


def _shuffled_blocks(n: int, block_size: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """A random order of ``range(n)`` that reads one contiguous block of the pool at a time: the blocks in a random
    order, each permuted inside. Returns ``(block start, permutation of the block)`` pairs."""
    starts = rng.permutation(np.arange(0, n, block_size))
    return [(int(s), rng.permutation(min(block_size, n - s))) for s in starts]
