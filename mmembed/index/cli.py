"""``mmembed index build`` and ``mmembed index search`` (registered by :mod:`mmembed.cli`; argparse only here, the
work is imported when a command runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError, InputError, MMEmbedError, positive_int

EPILOG_BUILD = """examples:
  mmembed index build --corpus corpus.jsonl -o my-index --model ./my-model
  accelerate launch --multi_gpu --num_processes 4 -m mmembed.cli index build --corpus corpus.jsonl -o my-index
  torchrun --nproc-per-node 4 -m mmembed.cli index build --corpus corpus.jsonl -o my-index

(accelerate launch needs --multi_gpu for several processes, also on a machine without GPUs: it then runs them on
the CPU; without it, one process runs.)

Each line of --corpus is {"id": ..., "text": ...} and/or "image": a path inside --image-root (default: the corpus
file's folder); a .parquet file with those columns works too (needs pyarrow), and so does a folder of images with
its metadata.jsonl (Hugging Face's imagefolder: "file_name" names the image and is the id when there is none). A
bad record stops the run with its file:line before anything is encoded. The corpus is cut into shards of --shard-size records (shard-NNNNN.npy with
shard-NNNNN.ids.json, each written whole or not at all) that the processes share; manifest.json records the model
fingerprint, template, pooler, prompt, dimension, dtype and corpus hash. Rerun the same command after an interruption:
finished shards are kept. A rerun with another model, corpus or option that changes the vectors is refused."""

EPILOG_SEARCH = """examples:
  mmembed index search my-index "how do plants make food?" -k 5
  mmembed index search my-index --queries-file queries.jsonl --faiss hnsw -o results.jsonl

Queries are encoded with the model in the index's manifest (its "query" prompt when it has one). A --queries-file
line is a text, or {"id": ..., "text": ... and/or "image": ...}. Output: one JSON line a query,
{"query", "id", "results": [{"id", "score"}, ...]}, on stdout or into -o (written whole or not at all).
--faiss: flat (exact; the default when faiss-cpu is installed), ivf, hnsw, pq (approximate), none (exact blocked
top-k without faiss; the default without it)."""


def add_index_parser(sub: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``index build`` and ``index search`` to the subcommands ``sub`` (``model_args`` adds the model options)."""
    index = sub.add_parser("index", help="build a sharded embedding index of a corpus (resumable, multi-process), "
                                         "search it")
    commands = index.add_subparsers(dest="index_command", required=True)
    b = commands.add_parser("build", help="encode a corpus into shards", epilog=EPILOG_BUILD,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--corpus", required=True, help="JSON lines (or .parquet) of {id, text and/or image}, or a "
                                                   "folder of images with its metadata.jsonl")
    b.add_argument("-o", "--output", required=True, help="index folder (a rerun resumes it)")
    b.add_argument("--image-root", help="folder image paths are relative to and must stay in (default: the "
                                        "corpus file's folder)")
    b.add_argument("--shard-size", "--shard_size", type=positive_int, default=50_000, help="records a shard")
    b.add_argument("--vector-dtype", choices=["float16", "float32"], default="float16", help="stored vectors")
    b.add_argument("--batch-size", type=positive_int, default=32)
    b.add_argument("--prompt-name", help="a prompt saved with the model (default: its 'document' prompt, if any)")
    b.add_argument("--prompt", help="an instruction put in front of every record")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    model_args(b)
    b.set_defaults(func=cmd_build)

    s = commands.add_parser("search", help="the k nearest records of queries", epilog=EPILOG_SEARCH,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("index", help="index folder")
    s.add_argument("queries", nargs="*", help="query texts")
    s.add_argument("--queries-file", help="one query a line: a text or a JSON object {id, text and/or image}")
    s.add_argument("--image-root", help="folder image paths in --queries-file are relative to (default: its folder)")
    s.add_argument("-k", type=positive_int, default=10, help="results a query")
    s.add_argument("--faiss", choices=["auto", "flat", "ivf", "hnsw", "pq", "none"], default="auto")
    s.add_argument("--nlist", type=positive_int, help="ivf/pq cells (default about 4 sqrt(n))")
    s.add_argument("--nprobe", type=positive_int, help="ivf/pq cells searched (default max(8, nlist/16))")
    s.add_argument("--hnsw-m", type=positive_int, default=32, help="hnsw links a node")
    s.add_argument("--ef-construction", type=positive_int, default=128,
                   help="hnsw candidates kept while building (more: better recall, slower build)")
    s.add_argument("--ef-search", type=positive_int, help="hnsw candidates kept while searching (max(64, 2k))")
    s.add_argument("--pq-m", type=positive_int, help="pq bytes a vector (default dimension / 4)")
    s.add_argument("--id-prefix", help="only records whose id starts with this")
    s.add_argument("--prompt-name", help="a prompt saved with the model (default: its 'query' prompt, if any)")
    s.add_argument("--prompt", help="an instruction put in front of every query")
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("-o", "--output", help="write the results here (.jsonl) instead of stdout")
    s.add_argument("--model", help="the index's model from another place (checked against its fingerprint)")
    s.add_argument("--device", help="cpu, cuda ... for the query encoder and the blocked search")
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, print the traceback")
    s.set_defaults(func=cmd_search)


def cmd_build(args: argparse.Namespace) -> int:
    from .builder import build

    main = os.environ.get("RANK", "0") == "0"
    try:
        result = build(args.corpus, args.output, args.model, image_root=args.image_root, adapter=args.adapter,
                       shard_size=args.shard_size, dtype=args.vector_dtype, batch_size=args.batch_size,
                       prompt_name=args.prompt_name, prompt=args.prompt, quantize=args.quantize, backend=args.backend,
                       model_dtype=args.dtype, device=args.device, show_progress_bar=False if args.quiet else None)
    except MMEmbedError:
        if not main:  # every process meets the same error: the main process prints it
            raise SystemExit(2) from None
        raise
    if main:
        kept = f"; {len(result.skipped)} were finished before" if result.skipped else ""
        print(f"index {result.folder}: {result.rows} records in {result.shards} shards of dimension "
              f"{result.dimension} ({args.vector_dtype}){kept}", file=sys.stderr)
    return 0


def read_queries(path: Path, image_root: Path | None) -> tuple[list[Any], list[Any]]:
    """``(inputs, query ids)`` of a queries file: a text a line, or a JSON object with ``text`` and/or ``image``
    (and an optional ``id``); a bad line raises :class:`DataError` naming ``file:line``."""
    from ..textio import parse_json_object, resolve_image, text_lines

    root = image_root or path.parent
    inputs, ids = [], []
    for number, line in text_lines(path):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            inputs.append({"text": line})
            ids.append(None)
            continue
        record = parse_json_object(line, where)
        text, image = record.get("text"), resolve_image(record.get("image"), root, where)
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise DataError(f"{where}: 'text' must be a non-empty string, got {text!r:.40}.")
        if text is None and image is None:
            raise DataError(f"{where}: a query object needs 'text' and/or 'image'.")
        inputs.append({k: v for k, v in (("text", text), ("image", image)) if v is not None})
        ids.append(record.get("id"))
    return inputs, ids


def cmd_search(args: argparse.Namespace) -> int:
    from ..files import atomic_path, check_output_file
    from .search import Index

    output = check_output_file(args.output, (".jsonl",), what="--output") if args.output else None
    inputs: list[Any] = [{"text": q} for q in args.queries]
    ids: list[Any] = [None] * len(inputs)
    if args.queries_file:
        more, more_ids = read_queries(Path(args.queries_file), Path(args.image_root) if args.image_root else None)
        inputs, ids = inputs + more, ids + more_ids
    if not inputs:
        raise InputError("no queries: give query texts as arguments or --queries-file.")
    model = None
    if args.model:
        from ..embedder import Embedder

        model = Embedder.load(args.model, device=args.device)
    index = Index.load(args.index, method="blocked" if args.faiss == "none" else args.faiss, model=model,
                       device=args.device, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                       ef_construction=args.ef_construction, ef_search=args.ef_search, pq_m=args.pq_m)
    found, scores = index.search(inputs, args.k, id_prefix=args.id_prefix, prompt_name=args.prompt_name,
                                 prompt=args.prompt, batch_size=args.batch_size)
    lines = []
    for query, qid, hits, row in zip(inputs, ids, found, scores.tolist()):
        shown = query.get("text", query.get("image")) if len(query) == 1 else query
        lines.append(json.dumps({"query": shown, "id": qid, "results": [
            {"id": hit, "score": round(score, 6) if hit is not None else None} for hit, score in zip(hits, row)]}, ensure_ascii=False) + "\n")
    if output is None:
        sys.stdout.writelines(lines)
        return 0
    with atomic_path(output) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    print(f"wrote the top {min(args.k, len(index))} of {len(inputs)} queries to {output}", file=sys.stderr)
    return 0
