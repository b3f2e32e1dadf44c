"""Sharded, resumable encoding of a corpus into an index folder (``mmembed index build``, :func:`build`).

The corpus is cut into shards of ``shard_size`` records (the last one shorter), whatever the number of processes, so
a shard's vectors do not depend on how many processes made them: each shard is encoded alone, its records sorted by
length into chunks (:func:`mmembed.batching.length_batches`; ``encode`` batches each chunk by token length again),
and written as ``shard-NNNNN.npy`` (float16 or float32) with ``shard-NNNNN.ids.json``, each under a temporary name
renamed when complete. Under ``accelerate launch`` / ``torchrun`` the processes take the unfinished shards round-robin
(:mod:`mmembed.distributed`). The main process writes ``manifest.json`` first (:mod:`mmembed.index.manifest`);
a rerun into the same folder checks it, skips finished shards and encodes the rest (a killed run loses only the
shards it was writing), and one with another model, corpus or vector-changing option is refused with one line.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..batching import length_batches
from ..distributed import Processes, RowCounter, process_device, processes
from ..embedder import Embedder
from ..errors import ConfigError, DataError, InputError, RunStateError, is_int
from ..eval.encoding import encode_side
from ..files import atomic_path, check_output_folder
from ..progress import progress_options
from .corpus import Corpus, Record
from .manifest import (
    DTYPES,
    FORMAT,
    MANIFEST,
    VERSION,
    as_json,
    check_compatible,
    ids_path,
    model_fingerprint,
    read_manifest,
    shard_done,
    shard_ranges,
    vectors_path,
    write_manifest,
)

#: records a shard holds unless told otherwise
logger = logging.getLogger(__name__)

SHARD_SIZE = 50_000


@dataclass
class BuildResult:
    """What a build did (as seen by this process): the folder, its rows, dimension and shard count, the shards
    finished before this run (``skipped``) and those this process encoded (``encoded``)."""

    folder: Path
    rows: int
    dimension: int
    shards: int
    skipped: list[int] = field(default_factory=list)
    encoded: list[int] = field(default_factory=list)


def build(corpus: str | Path, output: str | Path, model: str | Path | Embedder | None = None, *,
          image_root: str | Path | None = None, adapter: str | Path | None = None, shard_size: int = SHARD_SIZE,
          dtype: str = "float16", batch_size: int = 32, chunk_size: int = 1024, prompt_name: str | None = None,
          prompt: str | None = None, quantize: str | None = None, backend: str | None = None,
          model_dtype: str = "auto", device: str | None = None, show_progress_bar: bool | None = None) -> BuildResult:
    """Encode ``corpus`` (JSON lines or ``.parquet`` of ``{"id", "text" and/or "image"}``) into the index folder
    ``output``, resuming an earlier run of the same settings there.

    ``model`` is a spec for ``mmembed.load`` (None: the default model; with ``adapter``, ``quantize``, ``backend``,
    ``model_dtype``, ``device``), or a loaded :class:`~mmembed.Embedder`. Documents get the model's ``"document"``
    prompt when it has one, or ``prompt_name`` / ``prompt``. Call it on every process of a distributed launch: each
    encodes its share of the shards. Raises :class:`~mmembed.errors.DataError` for a bad record (``file:line``),
    :class:`~mmembed.errors.RunStateError` when ``output`` holds an index of other settings.
    """
    _check_options(shard_size, dtype, batch_size, chunk_size)
    folder = check_output_folder(Path(output).expanduser(), what="index folder")
    data = Corpus.open(corpus, image_root)
    with processes() as procs:
        embedder, source = _load_model(model, adapter, quantize, backend, model_dtype, device, procs)
        name, text = document_prompt(embedder, prompt_name, prompt)

        def plan() -> tuple[dict[str, Any], list[int], str]:
            manifest = _manifest(embedder, source, data, {"name": name, "text": text}, dtype, shard_size)
            _claim(folder, manifest)
            done = [i for i, s in enumerate(manifest["shards"])
                    if shard_done(folder, s, manifest["dimension"], dtype)]
            return manifest, done, uuid.uuid4().hex

        manifest, done, nonce = procs.on_main(plan)
        shards = manifest["shards"]
        finished = set(done)
        todo = [i for i in range(len(shards)) if i not in finished]
        mine = todo[procs.rank::procs.world]
        if procs.main and 0 < len(todo) < procs.world:
            logger.warning("%d shard(s) to encode for %d processes: %d process(es) stay idle; a smaller "
                           "--shard-size (in a new index folder) shares the work.", len(todo), procs.world,
                           procs.world - len(todo))
        bar = _progress_bar(procs, len(data), sum(shards[i]["stop"] - shards[i]["start"] for i in done),
                            show_progress_bar)
        counter = RowCounter(procs, f"mmembed-index/{nonce}")
        start_count = bar.n if bar is not None else 0

        def count(rows: int) -> None:
            total = counter.add(rows)
            if bar is not None:
                bar.update(start_count + total - bar.n)

        try:
            for i in mine:
                records = data.records(shards[i]["start"], shards[i]["stop"])
                vectors = encode_records(embedder, records, text, batch_size, chunk_size, count)
                write_shard(folder, shards[i], records, vectors.astype(dtype))
        finally:
            if bar is not None:
                bar.close()
    return BuildResult(folder, len(data), manifest["dimension"], len(shards), done, mine)


def _check_options(shard_size: Any, dtype: Any, batch_size: Any, chunk_size: Any) -> None:
    for option, value in (("shard_size", shard_size), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if not is_int(value, 1):
            raise ConfigError(f"{option}={value!r}: give a whole number of at least 1.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: the vectors are stored as {' or '.join(DTYPES)}.")


def _load_model(model: Any, adapter: Any, quantize: str | None, backend: str | None, model_dtype: str,
                device: str | None, procs: Processes) -> tuple[Embedder, dict[str, Any]]:
    """The embedder and how to load it again (``spec`` and ``load`` options, recorded in the manifest)."""
    if isinstance(model, Embedder):
        return model, {"spec": str(model.backbone.name_or_path), "load": {}}
    spec = _absolute(model)
    options = {"adapter": _absolute(adapter), "quantize": quantize, "backend": backend, "dtype": model_dtype}
    device = device if device is not None else process_device(procs)
    return load_embedder(spec, options, device), {"spec": spec, "load": options}


def load_embedder(spec: str | None, options: dict[str, Any], device: str | None = None) -> Embedder:
    """``mmembed.load(spec, **options, device=device)`` (``spec`` None: the default model)."""
    if spec is None:
        from ..defaults import load_default

        return load_default(device=device, **options)
    return Embedder.load(spec, device=device, **options)


def _absolute(path: str | Path | None) -> str | None:
    """A local path made absolute (so the manifest names it from anywhere); a hub id or None as is."""
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else str(path)


def document_prompt(embedder: Embedder, prompt_name: str | None, prompt: str | None) -> tuple[str | None, str]:
    """The prompt documents are encoded with, as :func:`mmembed.eval.encoding.encode_side` chooses it for the
    ``"document"`` side: ``prompt``, else ``prompt_name``, else the model's ``"document"`` prompt when it has one
    (else its default prompt). Returns ``(name, text)``."""
    if prompt is not None:
        return None, prompt
    name = prompt_name if prompt_name is not None else "document" if "document" in embedder.prompts else None
    return name if name is not None else embedder.default_prompt_name, embedder.resolve_prompt(name, None)


def _manifest(embedder: Embedder, source: dict[str, Any], data: Corpus, prompt: dict[str, Any], dtype: str,
              shard_size: int) -> dict[str, Any]:
    """The manifest of this run, as JSON gives it back (so that it compares equal to a manifest read from disk)."""
    config = embedder.get_config()
    return as_json({
        "format": FORMAT, "version": VERSION,
        "model": {**source, "name_or_path": str(embedder.backbone.name_or_path),
                  "fingerprint": model_fingerprint(embedder), "config": config, "dtype": str(embedder.backbone.dtype)},
        "template": config["template"], "pooler": config["pooling"], "dimension": int(embedder.embedding_dim),
        "dtype": dtype, "prompt": prompt,
        "corpus": {"path": str(data.path.resolve()), "sha256": data.sha256, "rows": len(data),
                   "image_root": str(data.image_root.resolve()) if data.has_images else None},
        "shard_size": shard_size, "shards": shard_ranges(len(data), shard_size),
    })


def _claim(folder: Path, manifest: dict[str, Any]) -> None:
    """Check the manifest already in ``folder`` against ``manifest``, or write it there (a folder with shard files
    but no manifest is refused: they are not this build's)."""
    if (folder / MANIFEST).exists():
        check_compatible(read_manifest(folder), manifest, folder)
        return
    strays = sorted(p.name for p in folder.glob("shard-*") if p.is_file()) if folder.is_dir() else []
    if strays:
        raise RunStateError(f"index folder '{folder}' holds shard files ({strays[0]} ...) but no {MANIFEST}, so "
                            f"they cannot be checked; build into another folder.")
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, manifest)


def encode_records(embedder: Embedder, records: list[Record], prompt: str, batch_size: int, chunk_size: int,
                   count: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 vectors ``(len(records), dim)`` of ``records`` in their order, encoded in chunks of similar length
    (images together); ``count(rows)`` after each chunk. A bad input is named by its ``file:line``."""
    lengths = [len(r.text or "") + (1 << 30 if r.image is not None else 0) for r in records]
    out = np.zeros((len(records), embedder.embedding_dim), dtype=np.float32)
    for chunk in length_batches(lengths, chunk_size):
        try:
            vectors = encode_side(embedder, [records[i].to_input() for i in chunk], prompt=prompt,
                                  batch_size=batch_size, show_progress_bar=False, chunk_size=len(chunk))
        except InputError as exc:
            where = re.match(r"inputs\[(\d+)\]", str(exc))
            if where is None:
                raise
            raise DataError(f"{records[chunk[int(where[1])]].where}{str(exc)[where.end():]}") from exc
        out[chunk] = vectors
        if count is not None:
            count(len(chunk))
    return out


def write_shard(folder: Path, shard: dict[str, Any], records: list[Record], vectors: np.ndarray) -> None:
    """Write a shard's ids, then its vectors, each atomically: the vectors file marks the shard finished."""
    with atomic_path(ids_path(folder, shard)) as tmp:
        tmp.write_text(json.dumps([r.id for r in records]), encoding="utf-8")
    with atomic_path(vectors_path(folder, shard)) as tmp, tmp.open("wb") as f:
        np.save(f, vectors)


def _progress_bar(procs: Processes, total: int, done: int, show: bool | None) -> Any:
    """The main process's bar over all processes' rows (None elsewhere)."""
    if not procs.main:
        return None
    return tqdm(total=total, initial=done, desc="Indexing", unit="row", unit_scale=True,
                **progress_options(show, many=True))
