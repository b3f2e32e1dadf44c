"""Run the app with uvicorn. On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and lets the requests in
flight finish (up to ``drain_seconds``); then the batcher finishes what is queued and the process exits 0."""

from __future__ import annotations

import logging
import socket

from ..embedder import Embedder
from .settings import ServeSettings


def build_server(embedder: Embedder, settings: ServeSettings, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``embedder`` (not started): ``server.run()``, or ``server.run(sockets=[sock])``."""
    import uvicorn

    from .app import create_app

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has drained, so the process would die by it (exit -15, or a
            # KeyboardInterrupt); the shutdown was clean, so ``mmembed serve`` exits 0 instead
            getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(create_app(embedder, settings), host=settings.host, port=settings.port,
                            log_level=log_level, timeout_graceful_shutdown=settings.drain_seconds,
                            access_log=log_level == "debug")
    return Server(config)


def run(embedder: Embedder, settings: ServeSettings, log_level: str = "info", sock: socket.socket | None = None
        ) -> None:
    """Serve ``embedder`` until SIGTERM / SIGINT (blocking)."""
    logging.getLogger("mmembed").setLevel(logging.INFO)
    server = build_server(embedder, settings, log_level)
    if sock is not None and sock.proto == 0:
        # asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it every answer on a kept-alive
        # connection waits ~40 ms (Nagle's algorithm against the client's delayed ACK). Re-opening the descriptor
        # reads the real protocol.
        sock = socket.socket(fileno=sock.detach())
    server.run(sockets=[sock] if sock is not None else None)
