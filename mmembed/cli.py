"""The ``mmembed`` command line: ``mmembed encode``, ``mmembed eval <suite>``, ``mmembed synthetic``,
``mmembed demo`` and ``mmembed serve`` (:mod:`mmembed.serve.cli`; needs the serve extra only when run).

A user error (a bad option, input file, output path, model folder or input) is printed as one line on stderr,
``mmembed: error: ...``, and exits with code 2; ``--debug`` prints the traceback as well. Options, output paths and
the device are checked before any model is loaded, and every output file is written to a temporary name and
renamed when complete: an interrupted run (exit code 130) leaves the older file whole.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError, DataError, InputError, MMEmbedError, OutputPathError, one_line, positive_int
from .files import atomic_path, check_output_file, check_output_folder

#: output suffixes of ``mmembed encode``
ENCODE_SUFFIXES = (".npy", ".jsonl")
#: errors from the file system that are the user's when they name a path the user gave (:func:`names_user_path`)
USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
#: the options whose values are paths
PATH_OPTIONS = ("input_file", "image", "image_root", "output", "model", "adapter", "data", "tasks_file",
                "embeddings_dir", "mteb_cache", "tasks", "corpus", "index", "queries_file")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``mmembed: error: ...``, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mmembed: error: {message} (see '{self.prog} --help').\n")


EPILOG_ENCODE = """examples:
  mmembed encode "A man is playing a guitar." "A person plays an instrument." -o out.npy
  mmembed encode --input-file sentences.txt -o vectors.jsonl
  mmembed encode --image cat.jpg --image dog.png --model ./my-vlm -o images.npy
  mmembed encode --input-file queries.txt --prompt-name query --model ./saved-model -o q.npy

Each line of --input-file is one input: plain text, an image path (a line ending in .jpg/.png/...), or a JSON
object such as {"text": "a cat", "image": "cat.jpg"}. Image paths are resolved relative to the file's folder (or
--image-root) and must stay inside it; a bad line stops the run with its file:line.
Output: .npy (one row per input, in input order) or .jsonl ({"index", "input", "embedding"} per line), written
whole or not at all (an interrupted run leaves an older file in place).
Without --model, the embedded default model (SmolLM2-135M-Instruct) is used; it is converted once on first use.
A user error is one line on stderr with exit code 2 (--debug shows the traceback)."""


def _resolve_image(value: str, root: Path, where: str) -> Path:
    """An image path from an input file: relative to ``root`` and inside it, and existing."""
    path = (root / value).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{where}: image path '{value}' leaves the folder {root}; pass --image-root to allow "
                        f"another folder.")
    if not path.is_file():
        raise DataError(f"{where}: image file '{path}' does not exist.")
    return path


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (:func:`~mmembed.data.formats.text_lines`); a missing file, a folder or a
    line that is not UTF-8 is named."""
    from .data.formats import text_lines

    if path.is_dir():
        raise InputError(f"--input-file '{path}' is a folder; give a text file with one input per line.")
    if not path.is_file():
        raise InputError(f"--input-file '{path}' does not exist.")
    return [line for _, line in text_lines(path)]


def _read_input_file(path: Path, image_root: Path | None = None) -> list[Any]:
    """Inputs of a file, one a line; bad lines are reported as ``file:line`` (never skipped)."""
    from .inputs import looks_like_image_path

    root = image_root or path.parent
    inputs: list[Any] = []
    for number, line in enumerate(_read_lines(path), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg}).") from None
            if not isinstance(record, dict) or not set(record) <= {"text", "image"} or not record:
                raise DataError(f"{where}: a JSON line must be an object with 'text' and/or 'image'.")
            if record.get("image"):
                record["image"] = str(_resolve_image(record["image"], root, where))
            inputs.append(record)
        elif looks_like_image_path(line.strip()):
            inputs.append(_resolve_image(line.strip(), root, where))
        else:
            inputs.append(line)
    return inputs


def write_embeddings(output: Path, vectors: Any, inputs: list[Any]) -> None:
    """Write ``vectors`` to ``output`` (.npy, or .jsonl with each input), through a temporary file renamed when
    complete: interrupted, the older ``output`` (if any) stays whole."""
    import numpy as np

    if output.suffix not in ENCODE_SUFFIXES:
        raise OutputPathError(f"--output '{output}': use a file name ending in {' or '.join(ENCODE_SUFFIXES)}.")
    if output.suffix == ".npy" and isinstance(vectors, list) and len({v.shape for v in vectors}) > 1:
        raise OutputPathError(f"--output '{output}': inputs have different numbers of embeddings (special-token "
                              f"pooling); write .jsonl instead.")
    with atomic_path(output) as tmp:
        if output.suffix == ".npy":
            with tmp.open("wb") as f:
                np.save(f, np.stack(vectors) if isinstance(vectors, list) else vectors)
            return
        with tmp.open("w", encoding="utf-8") as f:
            for i, (item, vector) in enumerate(zip(inputs, vectors)):
                shown = str(item) if not isinstance(item, dict) else {k: str(v) for k, v in item.items()}
                f.write(json.dumps({"index": i, "input": shown, "embedding": np.asarray(vector).tolist()}) + "\n")


def check_model_options(args: argparse.Namespace) -> None:
    """Check ``--dtype`` and ``--device`` before any model is loaded (raises :class:`ConfigError`)."""
    import torch

    from .backbone import resolve_dtype

    try:
        resolve_dtype(args.dtype)
    except ConfigError:
        raise ConfigError(f"--dtype {args.dtype!r} is not a torch dtype; use float32, bfloat16, float16 or auto.") \
            from None
    if not args.device:
        return
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {args.device!r} is not a device; use cpu, cuda, cuda:1 or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(f"--device {args.device}: CUDA is not available ({why}); use --device cpu, or leave "
                          f"--device out to use a GPU when there is one.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {args.device}: there are only {torch.cuda.device_count()} CUDA devices "
                          f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1}).")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {args.device}: MPS is not available here; use --device cpu.")


def cmd_encode(args: argparse.Namespace) -> int:
    output = check_output_file(args.output, ENCODE_SUFFIXES, what="--output")
    check_model_options(args)
    inputs: list[Any] = list(args.texts)
    if args.input_file:
        inputs += _read_input_file(Path(args.input_file), Path(args.image_root) if args.image_root else None)
    inputs += [Path(p) for p in args.image]
    if not inputs:
        raise InputError("nothing to encode: give texts as arguments, --input-file or --image.")
    import mmembed

    from .progress import interactive_stream

    model = mmembed.load(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype,
                         quantize=args.quantize, backend=args.backend)
    if args.prompt_name is not None and args.prompt is None and args.prompt_name not in model.prompts:
        saved = f"its prompts are {', '.join(sorted(model.prompts))}" if model.prompts else "it has no saved prompts"
        raise ConfigError(f"--prompt-name {args.prompt_name}: not a prompt of this model ({saved}); give the "
                          f"instruction itself with --prompt '...'.")
    vectors = model.encode(inputs, prompt_name=args.prompt_name, prompt=args.prompt, batch_size=args.batch_size,
                           normalize=False if args.no_normalize else None, truncate_dim=args.truncate_dim,
                           show_progress_bar=not args.quiet and len(inputs) >= 64 and interactive_stream())
    write_embeddings(output, vectors, inputs)
    dimension = args.truncate_dim or model.embedding_dim
    print(f"wrote {len(inputs)} embeddings of dimension {dimension} to {args.output}", file=sys.stderr)
    return 0


EPILOG_EVAL = """examples:
  mmembed eval sts --model ./my-model --data ../shared/data/senteval
  mmembed eval mmeb --model ./my-vlm --data ./MMEB-eval --image-root ./MMEB-eval/images
  mmembed eval mbeir --model ./my-vlm --data ./M-BEIR --pool local --pool global
  mmembed eval mteb --model ./my-model --tasks STSBenchmark --tasks ./my-beir-folder
  mmembed eval retrieval --model ./my-model --data ./my-beir-folder
  mmembed eval trecqa --data ../shared/data/trecqa/dev.csv
  mmembed eval probes --data ../shared/data/senteval/STS/STSBenchmark/sts-dev.csv --layers
  accelerate launch --multi_gpu --num_processes 4 -m mmembed.cli eval mbeir --model ./my-vlm --data ./M-BEIR

Each run writes <suite>.json (scores and the protocol: model, prompts, image resolution, data file hashes,
seeds), <suite>.md and <suite>.png into --output, and prints the table. Under accelerate launch / torchrun the
processes split every encoding (one GPU each) and give the scores of one process; the main one writes and prints."""


def _load_model(args: argparse.Namespace):
    import mmembed

    return mmembed.load(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype,
                        quantize=args.quantize, backend=args.backend)


def run_suite(args: argparse.Namespace, progress: bool = True):
    """Run the suite named by ``args.suite``; returns its :class:`~mmembed.eval.report.Report`. Progress bars
    are shown on a terminal only (not written into logs), and only with ``progress``."""
    from .progress import interactive_stream

    model = _load_model(args)
    live = progress and interactive_stream()
    common: dict[str, Any] = {"batch_size": args.batch_size}
    if args.suite != "probes":
        common["show_progress_bar"] = live if args.suite == "mteb" else None if live else False
    if args.suite == "sts":
        from .eval.sts import evaluate_sts

        return evaluate_sts(model, args.data, splits=tuple(args.split or ("test", "dev")), tasks=args.task,
                            prompt_name=args.prompt_name, prompt=args.prompt, **common)
    if args.suite == "mmeb":
        from .eval.mmeb import evaluate_mmeb

        return evaluate_mmeb(model, args.data, tasks_file=args.tasks_file, tasks=args.task, image_root=args.image_root,
                             max_queries=args.max_queries, seed=args.seed,
                             resume_file=Path(args.output) / "mmeb.partial.json", **common)
    if args.suite == "mbeir":
        from .eval.mbeir import evaluate_mbeir

        return evaluate_mbeir(model, args.data, tasks=args.task, pools=tuple(args.pool or ("local", "global")),
                              split=args.split, image_root=args.image_root, instructions=not args.no_instructions,
                              seed=args.seed, max_queries=args.max_queries, embeddings_dir=args.embeddings_dir,
                              device=args.device, **common)
    if args.suite == "mteb":
        from .eval.mteb import mteb_report

        return mteb_report(model, args.tasks, output_folder=args.mteb_cache or str(Path(args.output) / "mteb"),
                           **common)
    if args.suite == "retrieval":
        from .eval.retrieval import evaluate_retrieval

        return evaluate_retrieval(model, args.data, split=args.split, seed=args.seed, device=args.device, **common)
    if args.suite == "trecqa":
        from .eval.retrieval import evaluate_trecqa

        path = Path(args.data) / "dev.csv" if Path(args.data).is_dir() else Path(args.data)
        return evaluate_trecqa(model, path, clean=not args.raw, seed=args.seed, **common)
    if args.suite == "probes":
        from .eval.probes import probes_report

        return probes_report(model, args.data, layers=args.layers, max_sentences=args.max_sentences,
                             seed=args.seed, **common)
    raise ConfigError(f"unknown suite {args.suite!r}")


def cmd_eval(args: argparse.Namespace) -> int:
    """``mmembed eval <suite>``; under ``accelerate launch`` / ``torchrun`` every process runs the suite with each
    encoding split among them (:mod:`mmembed.distributed`), and the main one alone writes and prints the report."""
    check_output_folder(args.output, what="--output")
    check_model_options(args)
    if getattr(args, "data", None) and not Path(args.data).exists():
        raise InputError(f"--data '{args.data}' does not exist.")
    from .distributed import process_device, processes, sharded_encoding

    with processes() as procs, sharded_encoding(procs), _quiet(not procs.main):
        if args.device in (None, "cuda"):  # one GPU per process (LOCAL_RANK) on several
            args.device = process_device(procs) or args.device
        report = run_suite(args, progress=procs.main)

        def save() -> dict[str, Path]:
            paths = report.save(Path(args.output))
            (Path(args.output) / f"{args.suite}.partial.json").unlink(missing_ok=True)  # finished: no resume state
            return paths

        paths = procs.on_main(save)
    if procs.main:
        print(report.to_markdown())
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """Log errors only while ``quiet`` (the processes other than the main one of a distributed run)."""
    previous = logging.root.manager.disable
    if quiet:
        logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def add_eval_parser(sub: Any, model_args: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate a model: sts, mmeb, mbeir, mteb, retrieval, trecqa, probes",
                        epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    suites = ev.add_subparsers(dest="suite", required=True)

    def common(p: argparse.ArgumentParser, data_help: str | None) -> None:
        if data_help:
            p.add_argument("--data", required=True, help=data_help)
        p.add_argument("-o", "--output", default="eval-results", help="folder for the report files")
        p.add_argument("--batch-size", type=positive_int, default=32)
        p.add_argument("--seed", type=int, default=0, help="seed of tie-breaking, samples and instruction choice")
        model_args(p)
        p.set_defaults(func=cmd_eval)

    p = suites.add_parser("sts", help="STS12-16, STS-B, SICK-R (SentEval protocol, Spearman x 100)")
    common(p, "SentEval data root (holding STS/ and SICK/)")
    p.add_argument("--split", action="append", choices=["test", "dev"], help="splits (default: test and dev)")
    p.add_argument("--task", action="append", help="only these tasks (STS12 ... STSBenchmark, SICKRelatedness)")
    p.add_argument("--prompt-name", help="a prompt saved with the model")
    p.add_argument("--prompt", help="an instruction put in front of every sentence")

    p = suites.add_parser("mmeb", help="MMEB (VLM2Vec format), Precision@1 with random tie-breaking")
    common(p, "folder with <Task>.jsonl / .parquet files (or <Task>/ folders)")
    p.add_argument("--image-root", help="folder the image paths are relative to (default: --data)")
    p.add_argument("--tasks-file", help="YAML task list {tasks: [{name, meta_task, distribution}]} (default: "
                                        "<data>/tasks.yaml if present, else the 36 MMEB v1 tasks)")
    p.add_argument("--task", action="append", help="only these tasks")
    p.add_argument("--max-queries", type=positive_int, help="a seeded sample of at most N queries per task")

    p = suites.add_parser("mbeir", help="M-BEIR (UniIR format), Recall@5 (@10 for Fashion200K/FashionIQ)")
    common(p, "M-BEIR root (query/, cand_pool/, qrels/, instructions/)")
    p.add_argument("--image-root", help="folder the image paths are relative to (default: --data)")
    p.add_argument("--pool", action="append", choices=["local", "global"], help="pools (default: both)")
    p.add_argument("--task", action="append", help="only these tasks, e.g. cirr_task7")
    p.add_argument("--split", default="test")
    p.add_argument("--no-instructions", action="store_true", help="do not put the task instruction before queries")
    p.add_argument("--max-queries", type=positive_int, help="a seeded sample of at most N queries per task")
    p.add_argument("--embeddings-dir", help="keep pool embeddings here as .npy (resumable, bounded memory)")

    p = suites.add_parser("mteb", help="any mteb task (through the mteb package), or local BEIR folders / STS files")
    common(p, None)
    p.add_argument("--tasks", action="append", required=True,
                   help="an mteb task name, a BEIR-layout folder or an STS file (repeatable)")
    p.add_argument("--mteb-cache", help="folder for mteb's own result files (default: <output>/mteb)")

    p = suites.add_parser("retrieval", help="a query -> corpus set in the BEIR layout (nDCG@10, MAP, MRR@10)")
    common(p, "BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    p.add_argument("--split", default="test")

    p = suites.add_parser("trecqa", help="TREC-QA answer selection (MAP, MRR@10)")
    common(p, "TREC-QA CSV file (qtext,label,atext) or a folder holding dev.csv")
    p.add_argument("--raw", action="store_true", help="keep questions whose candidates are all correct")

    p = suites.add_parser("probes", help="alignment, uniformity, anisotropy, effective rank, IsoScore")
    common(p, "sentences (.txt, one a line) or an STS-B file (.csv: pairs with gold > 4 give alignment)")
    p.add_argument("--layers", action="store_true", help="also a per-layer view (decoder LLMs)")
    p.add_argument("--max-sentences", type=positive_int, default=2000)


def cmd_synthetic(args: argparse.Namespace) -> int:
    from .synthetic import SyntheticConfig, generate

    check_output_folder(args.output, what="--output")
    config = SyntheticConfig(seed=args.seed, image_size=args.image_size, n_eval_queries=args.eval_queries,
                             n_candidates=args.candidates, n_train_per_task=args.train_per_task,
                             n_muco_images=args.muco_images, k_turns=args.k_turns, n_mbeir_queries=args.mbeir_queries)
    out = generate(args.output, config)
    print(f"wrote the synthetic benchmark to {out}; evaluate with:\n"
          f"  mmembed eval mmeb --data {out}/mmeb_eval --image-root {out}\n"
          f"  mmembed eval mbeir --data {out}/mbeir --image-root {out}", file=sys.stderr)
    return 0


DEMO_SENTENCES = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.",
                  "A woman is slicing an onion.", "Someone is cutting vegetables in a kitchen.",
                  "Shares dropped after the earnings report."]


def cmd_demo(args: argparse.Namespace) -> int:
    """Encode a few sentences with the default model and rank them by similarity to each query."""
    import mmembed

    check_model_options(args)
    model = mmembed.load(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype,
                         quantize=args.quantize, backend=args.backend)
    vectors = model.encode(DEMO_SENTENCES)
    scores = model.similarity(vectors, vectors)
    for i in (0, 3, 2):
        order = [j for j in scores[i].argsort(descending=True).tolist() if j != i]
        print(f"query: {DEMO_SENTENCES[i]}")
        for j in order:
            print(f"  {scores[i, j]:.3f}  {DEMO_SENTENCES[j]}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``mmembed serve``: the model options checked here, the rest in :func:`mmembed.serve.cli.serve_main`."""
    from .serve.cli import serve_main

    check_model_options(args)
    return serve_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmembed", description="Embed text and images with (multimodal) LLMs.")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, print the traceback too")
        p.add_argument("--model", help="model folder, hub id or .gguf file (default: the embedded SmolLM2-135M)")
        p.add_argument("--adapter", help="folder of a LoRA adapter to put on the model")
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (the checkpoint's)")
        p.add_argument("--quantize", choices=["int8", "none"], default=None,
                       help="int8: dynamic int8 linear layers, about 2x faster on CPU (needs mmembed[fast]); none: "
                            "float weights even where the folder saved int8 (default: the folder's choice)")
        p.add_argument("--backend", choices=["torch", "onnx"], default=None,
                       help="onnx: the forward pass in ONNX Runtime on the CPU, exported once and cached (needs "
                            "mmembed[fast]; default: the folder's choice, else torch)")

    enc = sub.add_parser("encode", help="embed texts and images, write .npy or .jsonl",
                         epilog=EPILOG_ENCODE, formatter_class=argparse.RawDescriptionHelpFormatter)
    enc.add_argument("texts", nargs="*", help="texts to embed")
    enc.add_argument("-i", "--input-file", help="file with one input per line (text, image path or JSON object)")
    enc.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    enc.add_argument("--image-root", help="folder that image paths in --input-file are relative to and must stay in "
                                          "(default: the input file's folder)")
    enc.add_argument("-o", "--output", required=True, help="output file: .npy or .jsonl")
    enc.add_argument("--prompt-name", help="a prompt saved with the model, e.g. query or document")
    enc.add_argument("--prompt", help="an instruction put in front of every input")
    enc.add_argument("--batch-size", type=positive_int, default=32)
    enc.add_argument("--truncate-dim", type=positive_int, help="keep the first N dimensions (Matryoshka)")
    enc.add_argument("--no-normalize", action="store_true", help="do not L2-normalise the embeddings")
    enc.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    model_args(enc)
    enc.set_defaults(func=cmd_encode)

    add_eval_parser(sub, model_args)
    from .serve.cli import add_serve_parser  # argparse only: the serve extra is imported when the command runs

    add_serve_parser(sub, model_args, cmd_serve)
    from .index.cli import add_index_parser  # argparse only: the index commands import their work when run

    add_index_parser(sub, model_args)

    syn = sub.add_parser("synthetic", help="write the synthetic multimodal benchmark (MMEB, MMEB-train, MuCo, "
                                           "M-BEIR formats), deterministic from a seed")
    syn.add_argument("-o", "--output", required=True, help="output folder (an earlier output there is replaced)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="on an error, print the traceback too")
    syn.add_argument("--image-size", type=int, default=128)
    syn.add_argument("--eval-queries", type=int, default=50, help="MMEB-eval queries per task")
    syn.add_argument("--candidates", type=int, default=16, help="retrieval candidates per query")
    syn.add_argument("--train-per-task", type=int, default=200, help="MMEB-train rows per in-distribution task")
    syn.add_argument("--muco-images", type=int, default=200, help="MuCo multi-turn lines")
    syn.add_argument("--k-turns", type=int, default=4, help="query/target pairs per MuCo image")
    syn.add_argument("--mbeir-queries", type=int, default=50, help="M-BEIR queries per task")
    syn.set_defaults(func=cmd_synthetic)

    demo = sub.add_parser("demo", help="rank a few sentences by similarity with the default model")
    model_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def names_user_path(exc: OSError, args: argparse.Namespace) -> bool:
    """Whether ``exc`` is about a path the user gave (an option of :data:`PATH_OPTIONS`, a file or folder below one,
    or beside the ``--input-file``, where its image paths point): then it is the user's mistake, told in one line;
    any other file-system error is a bug of mmembed's, shown with its traceback."""
    given = []
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        given += [Path(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, (str, Path))]
    if getattr(args, "input_file", None):
        given.append(Path(args.input_file).parent)
    roots = {p.expanduser().resolve() for p in given}
    for name in (exc.filename, exc.filename2):
        if name is None:
            continue
        path = Path(os.fsdecode(name)).expanduser().resolve()
        if path in roots or roots & set(path.parents):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 2 for a user error, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MMEmbedError, *USER_OS_ERRORS) as exc:
        if not isinstance(exc, MMEmbedError) and not names_user_path(exc, args):
            raise  # not about a path the user gave: a bug, with its traceback
        if args.debug:
            traceback.print_exc()
        print(f"mmembed: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("mmembed: interrupted; a file being written keeps its older contents.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
