"""``mmembed serve``: an OpenAI-compatible embedding server (``POST /v1/embeddings``) whose vectors equal
:meth:`~mmembed.embedder.Embedder.encode`, for text and images.

Importing this package is cheap and needs no server libraries; FastAPI and uvicorn (``pip install
'mmembed[serve]'``) are imported by :mod:`mmembed.serve.app` and :mod:`mmembed.serve.server`.

Modules: ``settings`` (the options), ``schema`` (request parsing, response bodies, OpenAI-style errors), ``inputs``
(request -> encode inputs: texts, ``data:`` URLs, confined local paths), ``batcher`` (dynamic batching with a bounded
queue), ``metrics`` (Prometheus text), ``app`` (the FastAPI app), ``server`` (uvicorn, graceful SIGTERM),
``cli`` (the ``mmembed serve`` options). The package imports only mmembed's lower floors (embedder, inputs, errors),
nothing from :mod:`mmembed.train`, and nothing below it imports the package.
"""

from __future__ import annotations

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "run"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "run":
        from .server import run

        return run
    from .._lazy import submodule

    return submodule(__name__, name)
