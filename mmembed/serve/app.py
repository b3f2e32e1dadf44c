"""The FastAPI app: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

Every answer that is not a 200 has OpenAI's error body (:class:`~mmembed.serve.schema.ApiError`): 400 for a bad
request or input (named by index, with the fix), 401 for a missing or wrong API key, 404 for another model's name,
413 for a body over ``max_request_bytes``, 503 when the batch queue is full; an unexpected failure is a 500 whose
body says so in one line (the traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..embedder import Embedder
from ..errors import InputError, MMEmbedError, one_line
from .batcher import Batcher, QueueFull
from .inputs import TokenCounter, request_items
from .metrics import Metrics
from .schema import ApiError, embedding_response, parse_request
from .settings import ServeSettings

logger = logging.getLogger(__name__)

#: requests of at most this many texts are prepared on the event loop (larger ones, and images, in a thread)
SMALL_REQUEST = 16


def _error(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (declared or streamed)."""
    too_large = ApiError(413, f"the request body is larger than the server's limit of {limit} bytes. Send fewer or "
                              f"smaller inputs per request.", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer; counted as a 400, not logged as a server error
        raise ApiError(400, "the client disconnected before sending the whole body.",
                       code="client_disconnected") from None
    return b"".join(chunks)


class _RequireKey:
    """ASGI middleware: every route but ``/health`` needs ``Authorization: Bearer <api_key>`` (else 401). Plain ASGI,
    not Starlette's ``BaseHTTPMiddleware``, so responses pass through untouched (no re-streaming)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, key = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.api_key):
                reason = "is missing" if not given else "is wrong"
                response = _error(ApiError(401, f"the API key {reason}: send the header 'Authorization: Bearer "
                                                f"<key>' with the key the server was started with (--api-key).",
                                           code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def single_vectors(out: Any, names: list[str], embedder: Embedder) -> list[np.ndarray]:
    """One vector per input from ``encode``'s output; a special-token pooler's ``(k, dim)`` rows must be one row
    (the model's single embedding), else the input is refused naming how many it gave."""
    if not embedder.multi_vector:
        return list(out)
    vectors = []
    for rows, where in zip(out, names):
        if rows.shape[0] != 1:
            token = getattr(embedder.pooler, "token", "special")
            raise ApiError(400, f"{where} gives {rows.shape[0]} embeddings (one per '{token}' token), and "
                                f"/v1/embeddings returns one per input. Send it with a single '{token}' (e.g. one "
                                f"user turn), or use Embedder.encode for several.", param=where.split("[")[0],
                           code="multiple_embeddings")
        vectors.append(rows[0])
    return vectors


def _dimensions(vectors: list[np.ndarray], dimensions: int | None, embedder: Embedder) -> list[np.ndarray]:
    """Matryoshka: the first ``dimensions`` values, normalised again when the model normalises (as
    ``encode(..., truncate_dim=dimensions)`` gives them)."""
    if dimensions is None:
        return vectors
    out = []
    for v in vectors:
        v = np.asarray(v[:dimensions], dtype=np.float32)
        out.append(v / max(float(np.linalg.norm(v)), 1e-12) if embedder.normalize else v)
    return out


def create_app(embedder: Embedder, settings: ServeSettings | None = None) -> FastAPI:
    """The server's app for ``embedder``; run it with uvicorn (:func:`mmembed.serve.server.run`)."""
    settings = settings or ServeSettings()
    metrics = Metrics()

    def run(items: list, prompt: str):
        return embedder.encode(items, prompt=prompt, batch_size=settings.batch_size,
                               max_batch_tokens=settings.max_batch_tokens, show_progress_bar=False,
                               cache_rationales=False)

    counter = TokenCounter(embedder)
    batcher = Batcher(run, max_batch_tokens=settings.max_batch_tokens, max_wait_s=settings.max_wait_ms / 1000,
                      max_queue=settings.max_queue, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="mmembed", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.metrics, app.state.settings, app.state.embedder = batcher, metrics, settings, embedder
    created = int(time.time())

    if settings.api_key is not None:
        app.add_middleware(_RequireKey, api_key=settings.api_key)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # never a traceback to the client
        logger.error("unexpected error on %s", request.url.path, exc_info=exc)
        return _error(ApiError(500, "internal server error; the server's log has the details.",
                               code="internal_error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.",
                               code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "mmembed"}]}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        start = time.perf_counter()
        try:
            body = await _embed(request, embedder, settings, batcher, counter)
        except ApiError as exc:
            metrics.response(exc.status)
            return _error(exc)
        except Exception:
            metrics.response(500)
            raise  # answered by ``unexpected``: one line, the traceback in the log only
        metrics.response(200, time.perf_counter() - start, len(body["data"]))
        return JSONResponse(body)

    return app


async def _embed(request: Request, embedder: Embedder, settings: ServeSettings, batcher: Batcher,
                 counter: TokenCounter) -> dict:
    """The response body of one embeddings request; every failure raised as :class:`ApiError`."""
    with batcher.arriving():  # a batch about to start waits for this request (up to --max-wait-ms)
        req, items, names, tokens, prompt = await _prepare(request, embedder, settings, counter)
    try:
        out = await batcher.submit(items, sum(tokens), prompt)
    except QueueFull as exc:
        raise ApiError(503, f"{exc} Retry in a moment, or start the server with a larger --max-queue.",
                       type="server_error", code="queue_full") from None
    except InputError as exc:  # the processor or pooler refused an input: encode names it as inputs[i]
        message = one_line(exc)
        if names[0].startswith("input[") and message.startswith("inputs["):  # the request's list, same order
            message = "input[" + message[len("inputs["):]
        elif message.startswith("inputs[0]"):  # one input: "input" or "messages"
            message = names[0] + message[len("inputs[0]"):]
        raise ApiError(400, message, param=names[0].split("[")[0], code="invalid_input") from None
    vectors = _dimensions(single_vectors(out, names, embedder), req.dimensions, embedder)
    return embedding_response(vectors, settings.model_name, req.encoding_format, sum(tokens))


async def _prepare(request: Request, embedder: Embedder, settings: ServeSettings, counter: TokenCounter) -> tuple:
    """The request read, parsed and checked: ``(request, items, their names, token counts, prompt)``."""
    req = parse_request(await _read_body(request, settings.max_request_bytes))
    if req.model is not None and req.model != settings.model_name:
        raise ApiError(404, f"the model '{req.model}' is not served here; this server serves "
                            f"'{settings.model_name}'.", param="model", code="model_not_found")
    if req.dimensions is not None and not 1 <= req.dimensions <= embedder.embedding_dim:
        raise ApiError(400, f"'dimensions' is {req.dimensions}; this model gives 1 to {embedder.embedding_dim}.",
                       param="dimensions", code="invalid_dimensions")
    try:
        prompt = embedder.resolve_prompt(req.prompt_name, req.prompt)
    except MMEmbedError as exc:
        raise ApiError(400, one_line(exc), param="prompt_name", code="invalid_prompt") from None

    def prepare():
        items, names = request_items(req, embedder, settings)
        return items, names, counter(items, prompt, names)

    small = isinstance(req.input, str) or (isinstance(req.input, list) and len(req.input) <= SMALL_REQUEST
                                           and all(isinstance(v, str) for v in req.input))
    # a few texts are checked and counted in well under a millisecond: on the event loop, no thread hop; images
    # (decoding) and long lists go to a thread so the loop keeps serving
    return (req, *(prepare() if small else await run_in_threadpool(prepare)), prompt)
