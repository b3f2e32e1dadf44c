"""A request's ``input`` / ``messages`` -> the :class:`~mmembed.inputs.Item` list ``encode`` takes, with every bad
input refused as a 400 that names its index and the fix.

- ``input``: a string or a list; each string is always text (never read as a file path); a list item may also be
  mmembed's ``{"text": ..., "image": URL}`` object. Token-id arrays (OpenAI's other input form) are refused: this
  server's tokenizer is the model's, not OpenAI's.
- ``messages`` (vLLM's chat-embedding shape): one conversation, one embedding. One user message of text parts and at
  most one ``image_url`` part is embedded as ``encode({"text": ..., "image": ...})`` (the model's own template
  applies, as for ``mmembed encode``); any other conversation goes through the model's chat template as chat
  messages (``encode([messages])``).
- Image URLs: ``data:`` URLs (base64); local paths (or ``file://``) only inside ``--image-root``; ``http(s)://``
  only with ``--allow-remote-images``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..embedder import Embedder
from ..errors import InputError
from ..inputs import Item, check_unicode, load_image
from .schema import ApiError, EmbeddingRequest
from .settings import ServeSettings

#: the most pixels an image of a request may have (decoding a larger one could take gigabytes)
MAX_PIXELS = 36_000_000


def _bad(where: str, message: str, code: str = "invalid_input") -> ApiError:
    return ApiError(400, f"{where}{message}", param=where.split("[")[0].split(".")[0] or None, code=code)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, f" must be a string, got {type(value).__name__}.", "invalid_type")
    if not value.strip():
        raise _bad(where, " is an empty string: there is nothing to embed. Remove it or give it text.", "empty_input")
    try:
        return check_unicode(value, where)
    except InputError as exc:
        raise ApiError(400, str(exc), param=where.split("[")[0], code="invalid_input") from None


def _open(data: bytes, where: str, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:  # known before decoding: no memory spent on a huge image
                raise ApiError(413, f"{where}: the image is {img.width}x{img.height} pixels, more than the server's "
                                    f"limit of {MAX_PIXELS}. Send a smaller (resized) image.",
                               param=where.split("[")[0].split(".")[0], code="image_too_large")
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad(where, f": {what} is not an image PIL can read ({type(exc).__name__}: {exc}). Send PNG, JPEG or "
                          f"WebP bytes.", "invalid_image") from None


def _data_url(url: str, where: str, settings: ServeSettings) -> Image.Image:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise _bad(where, ": a data: URL must be base64, e.g. 'data:image/png;base64,iVBORw0...'.", "invalid_image")
    if len(payload) * 3 // 4 > settings.max_image_bytes:
        raise ApiError(413, f"{where}: the image is larger than the server's limit of {settings.max_image_bytes} "
                            f"bytes. Send a smaller (resized) image.", param=where.split("[")[0],
                       code="image_too_large")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(where, f": the data: URL's base64 cannot be decoded ({exc}). Encode the image file's bytes with "
                          f"base64.b64encode and send 'data:image/png;base64,<that>'.", "invalid_image") from None
    return _open(data, where, "the data: URL's content")


def _download(url: str, where: str, settings: ServeSettings) -> Image.Image:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # http(s) only, checked by the caller
            data = response.read(settings.max_image_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _bad(where, f": cannot download '{url}' ({exc}). Send the image as a data: URL instead.",
                   "invalid_image") from None
    if len(data) > settings.max_image_bytes:
        raise ApiError(413, f"{where}: '{url}' is larger than the server's limit of {settings.max_image_bytes} "
                            f"bytes.", param=where.split("[")[0], code="image_too_large")
    return _open(data, where, f"'{url}'")


def _local(value: str, where: str, settings: ServeSettings) -> Image.Image:
    root = settings.image_root
    if root is None:
        raise _bad(where, f": '{value}' is a local path, and this server reads no local files. Send the image as a "
                          f"data: URL, or start the server with --image-root DIR to allow paths inside DIR.",
                   "invalid_image")
    path = Path(value.removeprefix("file://"))
    path = (root / path).resolve()
    if not path.is_relative_to(root):
        raise _bad(where, f": '{value}' is outside the server's --image-root. Give a path inside {root} (or relative "
                          f"to it).", "invalid_image")
    try:
        return load_image(path, where)
    except InputError as exc:
        raise ApiError(400, str(exc), param=where.split("[")[0], code="invalid_image") from None


def load_image_url(url: Any, where: str, settings: ServeSettings) -> Image.Image:
    """The image of a ``data:`` URL, a local path inside ``--image-root`` or (when allowed) an ``http(s)`` URL."""
    if isinstance(url, dict):  # OpenAI's {"url": ...} object
        url = url.get("url")
    if not isinstance(url, str) or not url.strip():
        raise _bad(where, f": an image must be a URL string (data:, a path or http(s)://), got {url!r}.",
                   "invalid_image")
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme == "data":
        return _data_url(url, where, settings)
    if scheme in ("http", "https"):
        if not settings.allow_remote_images:
            raise _bad(where, f": '{url[:100]}' is a remote URL, and this server downloads no images. Send the image "
                              f"as a data: URL, or start the server with --allow-remote-images.", "invalid_image")
        return _download(url, where, settings)
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a one-letter scheme is a Windows drive)
        return _local(url, where, settings)
    raise _bad(where, f": unsupported image URL scheme '{scheme}:'. Use data:, a path inside --image-root, or "
                      f"http(s)://.", "invalid_image")


def _input_item(value: Any, where: str, settings: ServeSettings) -> Item:
    if isinstance(value, str):
        return Item(text=_text(value, where))
    if isinstance(value, dict):
        if not value or set(value) - {"text", "image"}:
            raise _bad(where, f": an object input takes the keys 'text' and/or 'image' (a URL), got {sorted(value)}.",
                       "invalid_type")
        text = _text(value["text"], f"{where}.text") if value.get("text") is not None else None
        image = load_image_url(value["image"], f"{where}.image", settings) if value.get("image") is not None \
            else None
        if text is None and image is None:
            raise _bad(where, ": both 'text' and 'image' are null.", "invalid_type")
        return Item(text=text, image=image)
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise _bad(where, " is token ids; this server tokenizes with the model's own tokenizer, so send the text "
                          "itself.", "invalid_type")
    raise _bad(where, f" has type {type(value).__name__}; send a string (or an object with 'text' and/or "
                      f"'image').", "invalid_type")


def _message_parts(content: Any, where: str, settings: ServeSettings) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": check_unicode(content, where)}]
    if not isinstance(content, list):
        raise _bad(where, f" must be a string or a list of parts, got {type(content).__name__}.", "invalid_type")
    parts = []
    for k, part in enumerate(content):
        at = f"{where}[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(part.get("text"), f"{at}.text")})
        elif kind in ("image_url", "image"):
            parts.append({"type": "image", "image": load_image_url(part.get(kind), f"{at}.{kind}", settings)})
        else:
            raise _bad(at, ": a part must be {'type': 'text', 'text': ...} or {'type': 'image_url', 'image_url': "
                           "{'url': ...}}.", "invalid_type")
    return parts


def _messages_item(messages: Any, settings: ServeSettings) -> Item:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", " must be a non-empty list of {'role', 'content'} messages.", "invalid_type")
    converted = []
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise _bad(f"messages[{j}]", ": a message must be an object with 'role' and 'content'.", "invalid_type")
        converted.append({"role": message["role"],
                          "content": _message_parts(message["content"], f"messages[{j}].content", settings)})
    parts = converted[0]["content"]
    images = [p["image"] for p in parts if p["type"] == "image"]
    if len(converted) == 1 and converted[0]["role"] == "user" and len(images) <= 1:
        text = "".join(p["text"] for p in parts if p["type"] == "text") or None
        return Item(text=text, image=images[0] if images else None)
    return Item(messages=converted)


def request_items(request: EmbeddingRequest, embedder: Embedder, settings: ServeSettings
                  ) -> tuple[list[Item], list[str]]:
    """The inputs of ``request`` as items for ``encode``, each checked against the model, and their names
    (``input[3]``, ``messages``) for errors."""
    if (request.input is None) == (request.messages is None):
        raise ApiError(400, "give either 'input' (a string or a list of strings) or 'messages' (one conversation, "
                            "vLLM's shape), not " + ("both." if request.input is not None else "neither."),
                       param="input", code="missing_input")
    if request.messages is not None:
        items, names = [_messages_item(request.messages, settings)], ["messages"]
    elif isinstance(request.input, list):
        if not request.input:
            raise _bad("input", " is an empty list: there is nothing to embed.", "empty_input")
        if len(request.input) > settings.max_inputs:
            raise _bad("input", f" holds {len(request.input)} inputs; this server takes at most {settings.max_inputs} "
                                f"per request. Split it into several requests.", "too_many_inputs")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in request.input):
            raise _bad("input", " is token ids; this server tokenizes with the model's own tokenizer, so send the "
                                "text itself.", "invalid_type")
        names = [f"input[{i}]" for i in range(len(request.input))]
        items = [_input_item(v, w, settings) for v, w in zip(request.input, names)]
    else:
        items, names = [_input_item(request.input, "input", settings)], ["input"]
    for item, where in zip(items, names):
        check_item(item, where, embedder)
    return items, names


def check_item(item: Item, where: str, embedder: Embedder) -> None:
    """Refuse what ``encode`` would refuse for this model, before the input joins a batch."""
    backbone = embedder.backbone
    if item.has_image and not backbone.supports_images:
        raise _bad(where, f" holds an image, but '{backbone.name_or_path}' is a text-only model. Send text, or serve "
                          f"a vision-language model.", "image_not_supported")
    if item.has_image and embedder.rationale is not None:
        raise _bad(where, " holds an image, but this model runs in rationale mode (GRACE), which encodes text only. "
                          "Send text.", "image_not_supported")
    if item.messages is not None and not backbone.renderer.has_chat_template:
        raise _bad(where, " is a conversation, but the model has no chat template. Send one user message, or plain "
                          "input.", "invalid_input")


class TokenCounter:
    """Tokens of each input as rendered for the model (prompt and template included; an image counts as its
    placeholder tokens of the rendered text, not its patches).

    It tokenizes with its own copy of the model's tokenizer, settled by one call up front: a fast tokenizer's state
    (truncation, padding) is mutated by calls with other settings, which fails ("Already borrowed") while another
    thread is inside it, and ``encode`` uses the model's own tokenizer in the worker thread meanwhile."""

    def __init__(self, embedder: Embedder) -> None:
        self.renderer = embedder.backbone.renderer
        self.add_special_tokens = embedder.backbone.add_special_tokens
        self.tokenizer = copy.deepcopy(embedder.backbone.tokenizer)
        self._ids(["settle"])

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=self.add_special_tokens, verbose=False)["input_ids"]

    def __call__(self, items: list[Item], prompt: str, names: list[str]) -> list[int]:
        """Token counts of ``items``; ``names`` name the inputs in errors."""
        texts = []
        for item, where in zip(items, names):
            try:
                texts.append(self.renderer.render(item, prompt).text)
            except Exception as exc:  # noqa: BLE001 - whatever the chat template raises, name the input
                raise _bad(where, f": the model's chat template refused it ({type(exc).__name__}: {exc}). Fix this "
                                  f"input or leave it out.") from None
        return [len(ids) for ids in self._ids(texts)]
