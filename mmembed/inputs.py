"""Input normalisation and prompt templates.

Every input of ``encode`` becomes an :class:`Item` (text and/or image, or chat messages). A
:class:`PromptTemplate` turns an item into the exact string the backbone sees, optionally through the
model's chat template, and reports the *prefix* (system prompt, instruction, template text before the
content) so poolers can leave it out.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

#: What ``encode`` accepts for one input.
InputLike = str | os.PathLike | Image.Image | dict | list


@dataclass
class Item:
    """One normalised input: a text, an image, both, or a list of chat messages."""

    text: str | None = None
    image: Image.Image | None = None
    messages: list[dict] | None = None

    @property
    def modality(self) -> str:
        """``"text"``, ``"image"``, ``"text+image"`` or ``"messages"``."""
        if self.messages is not None:
            return "messages"
        if self.image is not None:
            return "text+image" if self.text is not None else "image"
        return "text"

    @property
    def has_image(self) -> bool:
        if self.messages is not None:
            return any(isinstance(p, dict) and p.get("type") == "image" for m in self.messages
                       for p in (m["content"] if isinstance(m.get("content"), list) else []))
        return self.image is not None

    def images(self) -> list[Image.Image]:
        if self.messages is None:
            return [self.image] if self.image is not None else []
        return [p["image"] for m in self.messages if isinstance(m.get("content"), list)
                for p in m["content"] if isinstance(p, dict) and p.get("type") == "image"]


def looks_like_image_path(value: str) -> bool:
    """A string is read as an image path when it ends with an image suffix and is a single line."""
    return "\n" not in value and len(value) < 4096 and Path(value).suffix.lower() in IMAGE_SUFFIXES


def load_image(source: Any, where: str, open_image: bool = True) -> Image.Image:
    """Open ``source`` (PIL image or path) as an RGB image; ``where`` names the input in errors. With
    ``open_image=False`` a path is only checked (it exists, it is a file) and returned as a :class:`~pathlib.Path`,
    for :func:`open_images` to open later."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"{where}: an image must be a PIL.Image.Image or a path, got {type(source).__name__}.")
    if isinstance(source, str) and "://" in source:
        raise InputError(f"{where}: '{source}' is a URL; mmembed does not download images. Download it and pass the "
                         f"file path or a PIL image.")
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{where}: '{path}' is a folder, not an image file.")
    if not path.is_file():
        raise InputError(f"{where}: image file '{path}' does not exist. Pass an existing image path, or wrap "
                         f"the string as {{'text': ...}} if it is meant as text.")
    if not open_image:
        return path  # type: ignore[return-value] - opened by open_images
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{where}: cannot read image '{path}' ({exc}). The file is corrupt or not an image; "
                         f"re-encode it as PNG/JPEG.") from exc


def open_images(rendered: Rendered, where: str) -> Rendered:
    """``rendered`` with the image paths that ``to_items(..., open_images=False)`` left unopened opened."""
    if all(isinstance(image, Image.Image) for image in rendered.images):
        return rendered
    return Rendered(rendered.text, [load_image(image, where) for image in rendered.images], rendered.prefix)


def check_unicode(value: str, where: str) -> str:
    """Refuse a string the tokenizer cannot take: one holding a lone surrogate (e.g. ``'\\ud800'``, left by
    decoding bytes with ``errors='surrogateescape'``), which is not valid Unicode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{where}: the text holds {value[exc.start]!r} at character {exc.start}, a lone surrogate "
                         f"that is not valid Unicode. Clean it first, e.g. "
                         f"text.encode('utf-8', errors='replace').decode('utf-8').") from None
    return value


def _check_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: text must be a str, got {type(value).__name__}.")
    if not value.strip():
        raise InputError(f"{where} is an empty string: there is nothing to embed. Remove it or give it text.")
    return check_unicode(value, where)


def _normalise_messages(messages: list, where: str) -> list[dict]:
    out = []
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InputError(f"{where}[{j}]: a chat message must be a dict with 'role' and 'content'.")
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for k, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                    raise InputError(f"{where}[{j}].content[{k}]: expected {{'type': 'text'|'image', ...}}.")
                if part["type"] == "image":
                    part = {"type": "image", "image": load_image(part.get("image"), f"{where}[{j}].content[{k}]")}
                else:
                    check_unicode(str(part.get("text", "")), f"{where}[{j}].content[{k}]")
                parts.append(part)
            content = parts
        elif not isinstance(content, str):
            raise InputError(f"{where}[{j}].content must be a str or a list of parts.")
        else:
            check_unicode(content, f"{where}[{j}].content")
        out.append({**message, "content": content})
    return out


def to_item(value: InputLike, index: int, open_images: bool = True) -> Item:
    """Normalise one user input; errors name ``inputs[index]`` and the fix. ``open_images=False`` leaves image
    paths (checked) unopened: see :func:`load_image`."""
    where = f"inputs[{index}]"
    if isinstance(value, Item):
        return value
    if isinstance(value, (Image.Image, os.PathLike)):
        return Item(image=load_image(value, where, open_images))
    if isinstance(value, str):
        if looks_like_image_path(value):
            return Item(image=load_image(value, where, open_images))
        return Item(text=_check_text(value, where))
    if isinstance(value, dict):
        unknown = set(value) - {"text", "image"}
        if unknown or not value:
            raise InputError(f"{where}: a dict input takes the keys 'text' and/or 'image', got {sorted(value)}.")
        text = _check_text(value["text"], f"{where}['text']") if value.get("text") is not None else None
        image = load_image(value["image"], f"{where}['image']", open_images) if value.get("image") is not None \
            else None
        if text is None and image is None:
            raise InputError(f"{where}: both 'text' and 'image' are None.")
        return Item(text=text, image=image)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return Item(messages=_normalise_messages(value, where))
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InputError(f"{where} is bytes; mmembed embeds text and images, not raw bytes. Decode text first "
                         f"(value.decode('utf-8')), or open image bytes with PIL.Image.open(io.BytesIO(value)).")
    raise InputError(f"{where} has unsupported type {type(value).__name__}. Pass a str, a PIL.Image.Image, an "
                     f"image path, a dict {{'text': ..., 'image': ...}} or a list of chat messages.")


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def to_items(inputs: Any, open_images: bool = True) -> tuple[list[Item], bool]:
    """Normalise ``inputs`` (one input, or any ordered iterable of them); returns the items and whether one input
    was given. Raw bytes and sets (no order to match embeddings to inputs) are refused with the fix.
    ``open_images=False`` leaves image paths unopened (see :func:`load_image`)."""
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        raise InputError("inputs is bytes; mmembed embeds text and images, not raw bytes. Decode text first, e.g. "
                         "encode(data.decode('utf-8')), or open image bytes with PIL.Image.open(io.BytesIO(data)).")
    if isinstance(inputs, (set, frozenset)):
        raise InputError(f"inputs is a {type(inputs).__name__}, whose order is arbitrary, so the embeddings could "
                         f"not be matched to their inputs. Pass a list, e.g. encode(sorted(inputs)).")
    single = isinstance(inputs, (str, os.PathLike, Image.Image, dict, Item)) or _is_conversation(inputs)
    if single:
        values = [inputs]
    else:
        try:
            values = list(inputs)
        except TypeError:
            raise InputError(f"inputs has unsupported type {type(inputs).__name__}. Pass one input or a list of "
                             f"them.") from None
    return [to_item(v, i, open_images) for i, v in enumerate(values)], single


SENTINEL = "\u2063MMEMBED_CONTENT\u2063"


@dataclass
class PromptTemplate:
    """How an item becomes the backbone's input string.

    ``text``, ``image`` and ``text_image`` are per-modality formats with ``{text}`` and ``{image}`` slots; the
    slot order is the order the model sees (e.g. LCO: ``"{image}{text}\\nSummarize the above in one word:"``).
    A prompt (instruction) given to ``encode`` is put in front of the formatted content. With ``chat=True`` the
    content becomes a user message rendered by the model's chat template (after an optional ``system`` message,
    followed by the generation prompt or by a fixed assistant ``response`` such as ``"<|emb|>"``); models
    without a chat template get the plain formatted string.
    """

    text: str = "{text}"
    image: str = "{image}"
    text_image: str = "{image}{text}"
    chat: bool = False
    system: str | None = None
    add_generation_prompt: bool = True
    response: str | None = None

    def __post_init__(self) -> None:
        for name, slots in (("text", ["{text}"]), ("image", ["{image}"]), ("text_image", ["{text}", "{image}"])):
            fmt = getattr(self, name)
            missing = [s for s in slots if s not in fmt]
            if missing:
                raise ValueError(f"PromptTemplate.{name}={fmt!r} lacks the slot(s) {missing}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptTemplate:
        return cls(**data)

    @property
    def is_plain_prefix(self) -> bool:
        """True when text rendering is ``prompt + text`` (what sentence-transformers can reproduce)."""
        return self.text == "{text}" and not self.chat

    def format_for(self, item: Item) -> str:
        return {"text": self.text, "image": self.image, "text+image": self.text_image}[item.modality]


@dataclass
class Rendered:
    """A rendered input: the string for the tokenizer / processor, its images and its prefix string."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    prefix: str = ""


class Renderer:
    """Applies a :class:`PromptTemplate` with a given tokenizer / processor (chat template, image markup)."""

    def __init__(self, template: PromptTemplate, processor: Any, image_markup: str | None) -> None:
        self.template = template
        self.processor = processor
        self.image_markup = image_markup
        self.has_chat_template = bool(getattr(processor, "chat_template", None))
        self.multimodal = image_markup is not None

    @property
    def uses_chat(self) -> bool:
        return self.template.chat and self.has_chat_template

    def _chat(self, content: list[dict] | str, messages: list[dict] | None = None) -> str:
        msgs = list(messages) if messages is not None else []
        if messages is None:
            if self.template.system is not None:
                msgs.append({"role": "system", "content": self.template.system})
            msgs.append({"role": "user", "content": content})
        add_generation_prompt = self.template.add_generation_prompt
        if msgs[-1]["role"] == "assistant":  # the conversation brings its own reply
            add_generation_prompt = False
        elif self.template.response is not None:
            msgs.append({"role": "assistant", "content": self.template.response
                         if not self.multimodal else [{"type": "text", "text": self.template.response}]})
            add_generation_prompt = False
        return self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _content(self, fmt: str, text: str | None) -> tuple[list[dict], str]:
        """The user content as chat parts and as a plain string, with ``{text}`` filled in."""
        parts: list[dict] = []
        plain = ""
        for k, piece in enumerate(fmt.split("{image}")):
            if k > 0:
                parts.append({"type": "image"})
                plain += self.image_markup or ""
            piece = piece.replace("{text}", text if text is not None else "")
            if piece:
                parts.append({"type": "text", "text": piece})
                plain += piece
        return parts, plain

    def render(self, item: Item, prompt: str = "") -> Rendered:
        """Render ``item`` with ``prompt`` (an instruction prefix) in front of its content."""
        if item.messages is not None:
            if not self.has_chat_template:
                raise ValueError("chat-message inputs need a model with a chat template.")
            messages = [dict(m) for m in item.messages]
            for m in messages:
                if isinstance(m["content"], list):
                    m["content"] = [{"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})}
                                    for p in m["content"]]
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if prompt and first_user is not None:  # the instruction goes in front of the first user turn
                first_user["content"] = prompt + first_user["content"] if isinstance(first_user["content"], str) \
                    else [{"type": "text", "text": prompt}] + first_user["content"]
            return Rendered(self._chat([], messages), item.images(), "")
        fmt = prompt + self.template.format_for(item)
        parts, plain = self._content(fmt, item.text)
        first_slot = min(i for i in (fmt.find("{text}"), fmt.find("{image}")) if i >= 0)
        literal_prefix = fmt[:first_slot]
        if self.uses_chat:
            text = self._chat(parts if self.multimodal else plain)
            prefix = self._chat([{"type": "text", "text": SENTINEL}] if self.multimodal else SENTINEL)
            prefix = prefix.split(SENTINEL)[0] + literal_prefix
        else:
            text, prefix = plain, literal_prefix
        return Rendered(text, item.images(), prefix)


def image_markup_for(processor: Any) -> str | None:
    """The string that stands for one image in a rendered prompt, derived from the processor itself.

    Returns None for text-only models. With a chat template, the markup is read off the rendering of an image
    between two text parts (e.g. ``<|vision_start|><|image_pad|><|vision_end|>`` for Qwen2-VL).
    """
    if getattr(processor, "image_processor", None) is None:
        return None
    token = getattr(processor, "image_token", None)
    if getattr(processor, "chat_template", None):
        a, b = "\u2063A\u2063", "\u2063B\u2063"
        rendered = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": a}, {"type": "image"},
                                          {"type": "text", "text": b}]}], tokenize=False)
        if a in rendered and b in rendered:
            return rendered.split(a, 1)[1].split(b, 1)[0]
    return token
