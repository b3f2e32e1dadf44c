"""The options of ``mmembed serve`` (:class:`ServeSettings`), checked when built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, is_int


@dataclass
class ServeSettings:
    """How the server listens, batches and limits requests.

    Args:
        model_name: the model id of ``/v1/models``; a request naming another model gets 404.
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_batch_tokens: requests waiting together are merged into one ``encode`` call until their inputs hold this
            many tokens (a larger request runs alone); also ``encode``'s padded-token budget per forward pass.
        batch_size: at most this many inputs per forward pass (``encode``'s ``batch_size``).
        max_wait_ms: how long a batch about to start waits for requests still being read or parsed (none on their
            way: it starts at once).
        max_queue: at most this many requests wait for a batch; one more is answered 503.
        max_inputs: at most this many inputs per request (OpenAI's limit is 2048); more is a 400.
        max_request_bytes: a larger request body is answered 413.
        image_root: local image paths in requests are allowed inside this folder only (none: refused).
        allow_remote_images: download ``http(s)://`` image URLs (off: refused with a 400).
        max_image_bytes: the largest image a request may send or name (decoded size), else 413.
        drain_seconds: on SIGTERM, how long requests in flight may take to finish.
    """

    model_name: str = "mmembed"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_tokens: int = 16384
    batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_inputs: int = 2048
    max_request_bytes: int = 32 << 20
    image_root: Path | None = None
    allow_remote_images: bool = False
    max_image_bytes: int = 20 << 20
    drain_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "batch_size", "max_queue", "max_inputs", "max_request_bytes",
                     "max_image_bytes"):
            if not is_int(getattr(self, name), 1):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be an integer >= 1.")
        if not is_int(self.port, 0) or self.port > 65535:
            raise ConfigError(f"port={self.port!r} must be an integer between 0 and 65535.")
        if not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms={self.max_wait_ms!r} must be a number >= 0.")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty; give a non-empty key or leave it out.")
        if self.image_root is not None:
            root = Path(self.image_root).expanduser()
            if not root.is_dir():
                raise ConfigError(f"image_root '{root}' is not a folder; give the folder that request image paths "
                                  f"may point into.")
            self.image_root = root.resolve()
