"""Hub ids that fail fast where the hub cannot be reached.

Without a network, transformers retries every hub request with back-off before giving up (23-27 s for one
``mmembed.load("org/name")``). mmembed first checks, once per process, whether the hub's host answers at all (a TCP
connection within :data:`PROBE_SECONDS`); when it does not, models load with ``local_files_only=True``: a model in
the hub cache still loads, any other fails at once with :class:`~mmembed.errors.ModelNotFoundError`. Where the hub
answers nothing changes. ``HF_HUB_OFFLINE=1`` skips the check (transformers is offline already); with a proxy
configured the check is skipped too (the proxy decides).
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

#: how long the hub's host may take to accept a connection
PROBE_SECONDS = 2.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def endpoint() -> str:
    """The hub's address (``HF_ENDPOINT`` or https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline() -> bool:
    """Whether transformers runs offline by configuration (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def looks_like_hub_id(name: str | Path) -> bool:
    """Whether ``name`` can be a hub id (``name`` or ``org/name``) rather than a path (``./x``, ``/x``, ``a/b/c``)."""
    name = str(name)
    return bool(_HUB_ID.match(name)) and not name.endswith(".gguf") and not Path(name).expanduser().exists()


@functools.lru_cache(maxsize=8)
def reachable(url: str | None = None, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the hub's host (``url``, default :func:`endpoint`) accepts a TCP connection within ``timeout``
    seconds (checked once per process; the name lookup runs in a thread so that a hanging resolver is cut off too)."""
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    parsed = urlparse(url or endpoint())
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if host is None:
        return True
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_kwargs(name: str | Path) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for loading ``name``: ``local_files_only=True`` when it is a hub id and the
    hub cannot be reached (nothing for local paths, under ``HF_HUB_OFFLINE=1`` or where the hub answers)."""
    if not looks_like_hub_id(name) or offline() or reachable():
        return {}
    return {"local_files_only": True}
