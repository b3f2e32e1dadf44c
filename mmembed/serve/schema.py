"""OpenAI's embeddings request and response schema, and its error body.

A request is parsed from JSON by :func:`parse_request`; anything wrong raises :class:`ApiError`, which the app
answers as ``{"error": {"message", "type", "param", "code"}}`` with its status (400 for a bad request). Beyond
OpenAI's fields (``input``, ``model``, ``encoding_format``, ``dimensions``, ``user``) a request may carry vLLM's
``messages`` (one conversation with ``image_url`` parts, one embedding) and mmembed's ``prompt_name`` / ``prompt``
(an instruction, as in ``encode``).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError


class ApiError(Exception):
    """An error answered with an OpenAI-style body; ``message`` names the bad field or input and the fix."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class EmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings``; ``input`` and ``messages`` are checked by :mod:`mmembed.serve.inputs`
    (each input is named by its index there)."""

    model_config = ConfigDict(extra="forbid")

    input: Any = None
    messages: Any = None
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
    prompt_name: StrictStr | None = None
    prompt: StrictStr | None = None


def parse_request(raw: bytes) -> EmbeddingRequest:
    """The request of a JSON body; a body that is not JSON, or a field of the wrong type, is a 400 naming it."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}). Send a JSON object such as "
                            f'{{"model": "...", "input": ["some text"]}}.', code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body is a JSON {type(data).__name__}, not an object. Send "
                            f'{{"model": "...", "input": [...]}}.', code="invalid_json")
    try:
        return EmbeddingRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            message = (f"unknown field '{field}'. This server takes input, model, encoding_format, dimensions, "
                       f"user, messages, prompt_name and prompt.")
        else:
            message = f"'{field}': {error['msg']} (got {error.get('input')!r})."
        raise ApiError(400, message, param=field, code="invalid_field") from None


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One embedding as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    vector = np.asarray(vector, dtype="<f4")
    if encoding_format == "base64":
        return base64.b64encode(vector.tobytes()).decode("ascii")
    return vector.tolist()


def embedding_response(vectors: list[np.ndarray], model: str, encoding_format: str, tokens: int) -> dict:
    """The response body: one ``{"object": "embedding", "index", "embedding"}`` per input, in input order."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
