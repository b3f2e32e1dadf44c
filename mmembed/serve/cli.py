"""The ``mmembed serve`` subcommand: its options (:func:`add_serve_parser`) and its run (:func:`cmd_serve`).

Building the parser imports nothing beyond argparse, so ``mmembed`` works without the serve extra; running it
without FastAPI / uvicorn is one line telling ``pip install 'mmembed[serve]'``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
from typing import Any

from ..errors import ConfigError

EPILOG = """examples:
  mmembed serve ./my-model --port 8000
  mmembed serve ./my-vlm --image-root ./images --api-key $KEY --host 0.0.0.0
  curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' \\
       -d '{"model": "my-model", "input": ["A man is playing a guitar."]}'

POST /v1/embeddings takes OpenAI's request (input, model, encoding_format, dimensions) and vLLM's "messages"
with image_url parts (data: URLs; local paths inside --image-root); GET /v1/models, /health, /metrics."""


def add_serve_parser(sub: Any, model_args: Any, func: Any) -> None:
    """Add ``mmembed serve`` to the subcommands ``sub``: ``model_args`` adds --model/--adapter/--device/--dtype/
    --debug, ``func`` runs it (the command line's, which checks those options, then calls :func:`serve_main`)."""
    from .settings import ServeSettings

    default = ServeSettings()
    p = sub.add_parser("serve", help="OpenAI-compatible embedding server (text and images), vectors equal encode",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_path", nargs="?", metavar="MODEL",
                   help="model folder, hub id or .gguf file (default: the embedded default model)")
    p.add_argument("--host", default=default.host, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=default.port)
    p.add_argument("--api-key", default=os.environ.get("MMEMBED_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $MMEMBED_API_KEY)")
    p.add_argument("--served-model-name", help="the model id clients send (default: MODEL as given, or 'mmembed')")
    p.add_argument("--max-batch-tokens", type=int, default=default.max_batch_tokens,
                   help="token budget of one merged encode batch")
    p.add_argument("--batch-size", type=int, default=default.batch_size, help="inputs per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=default.max_wait_ms,
                   help="how long a batch waits for requests still being read (none: it starts at once)")
    p.add_argument("--max-queue", type=int, default=default.max_queue,
                   help="requests that may wait for a batch; more get 503")
    p.add_argument("--max-inputs", type=int, default=default.max_inputs, help="inputs per request; more get 400")
    p.add_argument("--max-request-mb", type=float, default=default.max_request_bytes / (1 << 20),
                   help="largest request body in MiB; larger get 413")
    p.add_argument("--image-root", help="folder that local image paths in requests may point into (default: none)")
    p.add_argument("--allow-remote-images", action="store_true", help="download http(s) image URLs")
    p.add_argument("--drain-seconds", type=float, default=default.drain_seconds,
                   help="on SIGTERM, how long requests in flight may take to finish")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    model_args(p)
    p.set_defaults(func=func)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (before the model loads, so a port in use fails at once, in one line)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or "
                          f"--host.") from None
    return sock


def serve_main(args: argparse.Namespace) -> int:
    """Check the options, bind the port, load the model and serve it until SIGTERM."""
    if args.model_path and args.model and args.model_path != args.model:
        raise ConfigError(f"give the model once: MODEL '{args.model_path}' or --model '{args.model}', not both.")
    model_path = args.model = args.model_path or args.model  # args.model: a path error names the user's path
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"mmembed serve needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: pip install 'mmembed[serve]'.")
    import mmembed

    from .server import run
    from .settings import ServeSettings

    settings = ServeSettings(
        model_name=args.served_model_name or model_path or "mmembed", host=args.host, port=args.port,
        api_key=args.api_key, max_batch_tokens=args.max_batch_tokens, batch_size=args.batch_size,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_inputs=args.max_inputs,
        max_request_bytes=int(args.max_request_mb * (1 << 20)), image_root=args.image_root,
        allow_remote_images=args.allow_remote_images, drain_seconds=args.drain_seconds)
    sock = listen(settings.host, settings.port)
    model = mmembed.load(model_path, adapter=args.adapter, device=args.device, dtype=args.dtype,
                         quantize=args.quantize, backend=args.backend)
    port = sock.getsockname()[1]
    print(f"mmembed serve: '{settings.model_name}' on http://{settings.host}:{port}/v1 "
          f"(dim {model.embedding_dim}{', API key required' if settings.api_key else ''})", file=sys.stderr,
          flush=True)
    run(model, settings, log_level=args.log_level, sock=sock)
    return 0
