"""mmembed's own sentence-transformers module: ``SentenceTransformer(folder, trust_remote_code=True)`` embeds with
``Embedder.encode`` for every folder ``Embedder.save`` wrote that sentence-transformers (ST) cannot reproduce with
its own modules (a suffix or chat template, a system prompt or fixed response, mean pooling without the prompt, a
special token, a cut layer, ``truncate_dim``, images)::

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer("out/my-embedder", trust_remote_code=True)
    vectors = model.encode(["a caption", {"text": "a cat", "image": pil_image}])   # == mmembed.load(...).encode

The folder's ``modules.json`` names :class:`MMEmbedModule` as its only module (:func:`mmembed.st_format.write_module`).
:meth:`MMEmbedModule.load` loads the folder with :meth:`Embedder.load <mmembed.embedder.Embedder.load>` (template,
pooler, layer, ``truncate_dim``, normalisation exactly as saved; an adapter-only folder on its recorded base model),
and :meth:`MMEmbedModule.forward` returns ``Embedder.encode``'s vectors as ``sentence_embedding``. ST passes the
inputs as they were given (text, PIL images or image paths, ``{"text": ..., "image": ...}`` dicts, chat messages)
and the resolved prompt's text, which becomes ``encode(prompt=...)``; its own ``truncate_dim`` and
``normalize_embeddings`` then apply on top, as for any ST model (truncating an already normalised vector: pass
``truncate_dim`` to ``mmembed.load`` instead for Matryoshka's truncate-then-normalise). The module embeds for
inference only (training goes through mmembed's recipes).

**trust_remote_code**: ST 6 imports a module class from outside its own package only with ``trust_remote_code=True``,
for a local folder as for a hub repository (``sentence_transformers.util.misc.import_module_class``; without it ST
raises ``ValueError: The model <folder> references the module class 'mmembed.integrations.sentence_transformers.
MMEmbedModule', which is not part of Sentence Transformers ... pass the argument trust_remote_code=True``). The class
comes from the installed ``mmembed`` package; no code is read from the folder. Without mmembed installed, ST stops
before loading anything, naming the requirement ``mmembed>=0.1.0`` of ``config_sentence_transformers.json``.

A folder whose vectors ST's one-vector-per-input ``encode`` cannot give (rationale mode; a special-token pooler that
does not give exactly one vector per input) is refused by :meth:`MMEmbedModule.load` with one line naming the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule
from sentence_transformers.util import load_dir_path

from .. import st_format
from ..embedder import CONFIG_NAME, Embedder
from ..errors import ConfigError, InputError, MMEmbedError, ModelFolderError
from ..model_folder import read_json


class MMEmbedModule(InputModule):
    """A sentence-transformers input module that embeds with an :class:`~mmembed.embedder.Embedder`."""

    config_file_name = st_format.MODULE_CONFIG
    save_in_root = True

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def tokenizer(self) -> Any:
        return self.embedder.backbone.tokenizer

    @property
    def processor(self) -> Any:
        return self.embedder.backbone.processor

    @property
    def modalities(self) -> list:
        """``"text"``; images and ``{"text", "image"}`` dicts for a vision-language model; chat messages when the
        model has a chat template (as ``Embedder.encode`` takes them)."""
        backbone = self.embedder.backbone
        modalities: list = ["text"]
        if backbone.supports_images:
            modalities += ["image", ("image", "text")]
        if backbone.renderer.has_chat_template:
            modalities.append("message")
        return modalities

    @property
    def max_seq_length(self) -> int:
        return self.embedder.backbone.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.embedder.backbone.max_length = value

    def get_embedding_dimension(self) -> int:
        return self.embedder.embedding_dim

    def get_config_dict(self) -> dict[str, Any]:
        return {"refusal": None}

    # ------------------------------------------------------------------------------------------------ embedding
    def preprocess(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """The inputs as ``Embedder.encode`` takes them, and the prompt's text (ST resolved prompt names; its
        ``task``, set by ``encode_query`` / ``encode_document`` for routing, is the prompt's business here)."""
        unused = sorted(k for k, v in kwargs.items() if v and k != "task")
        if unused:
            raise ConfigError(f"mmembed's sentence-transformers module takes no {unused[0]}=...; the template, "
                              f"pooler and options are the folder's (mmembed.load(folder, ...) overrides them).")
        return {"inputs": [_as_mmembed_input(x) for x in inputs], "prompt": prompt or ""}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``features["sentence_embedding"]``: ``Embedder.encode(features["inputs"], prompt=features["prompt"])``."""
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("mmembed's sentence-transformers module embeds for inference only (it calls "
                               "Embedder.encode); train the model with mmembed's recipes, then save it again.")
        inputs = features["inputs"]
        embedder = self.embedder
        try:
            vectors = embedder.encode(inputs, prompt=features["prompt"], batch_size=max(1, len(inputs)),
                                      convert_to_tensor=True, show_progress_bar=False)
        except MMEmbedError as exc:
            raise type(exc)(_named(str(exc), inputs)) from None
        if embedder.multi_vector:
            counts = [len(v) for v in vectors]
            if any(c != 1 for c in counts):
                i = next(i for i, c in enumerate(counts) if c != 1)
                raise InputError(f"input {_preview(inputs[i])} gives {counts[i]} vectors (one per "
                                 f"{embedder.pooler.token!r} token), but sentence-transformers takes one vector per "
                                 f"input. Leave the token out of the input, or use mmembed.load(...).encode.")
            vectors = torch.cat(vectors)
        features["sentence_embedding"] = vectors.to(embedder.device)
        return features

    # ------------------------------------------------------------------------------------------------ saving
    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             trust_remote_code: bool = False, model_kwargs: dict[str, Any] | None = None,
             processor_kwargs: dict[str, Any] | None = None, config_kwargs: dict[str, Any] | None = None,
             backend: str = "torch", **kwargs: Any) -> MMEmbedModule:
        """Load the folder (a local folder, or a hub repository ST downloads) with ``Embedder.load``; a folder
        whose config names a refusal raises :class:`~mmembed.errors.ModelFolderError` with it. ``model_kwargs``'
        ``dtype`` / ``torch_dtype`` become ``Embedder.load(dtype=...)``, the rest its ``model_kwargs``."""
        path = load_dir_path(model_name_or_path, subfolder, token=token, cache_folder=cache_folder,
                             revision=revision, local_files_only=local_files_only)
        if path is None or not (Path(path) / CONFIG_NAME).is_file():
            raise ModelFolderError(f"{model_name_or_path}: no {CONFIG_NAME} there, so it is no folder an mmembed "
                                   f"save wrote; mmembed's sentence-transformers module loads only those.")
        folder = Path(path)
        config = read_json(folder / cls.config_file_name) if (folder / cls.config_file_name).is_file() else {}
        refusal = config.get("refusal") if isinstance(config, dict) else None
        if refusal:
            raise ModelFolderError(f"{folder}: sentence-transformers cannot load this folder: {refusal}. Load it "
                                   f"with mmembed.load({str(folder)!r}).")
        if backend != "torch":
            raise ConfigError(f"backend={backend!r}: mmembed's sentence-transformers module runs on torch only; "
                              f"load the folder with backend='torch'.")
        if config_kwargs:
            raise ConfigError(f"config_kwargs={config_kwargs!r}: mmembed's sentence-transformers module loads the "
                              f"folder's own config; pass no config_kwargs.")
        options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        model_kwargs = dict(model_kwargs or {})
        dtype = model_kwargs.pop("dtype", None) or model_kwargs.pop("torch_dtype", None)
        if dtype is not None:
            options["dtype"] = dtype
        if model_kwargs:
            options["model_kwargs"] = model_kwargs
        if processor_kwargs:
            options["processor_kwargs"] = processor_kwargs
        return cls(Embedder.load(folder, **options))

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Save the embedder into ``output_path`` with ``Embedder.save`` (``SentenceTransformer.save`` calls this
        after writing its ``config_sentence_transformers.json``, which mmembed's save then writes in its place)."""
        folder = Path(output_path)
        st_config = folder / "config_sentence_transformers.json"
        stashed = st_config.read_bytes() if st_config.is_file() and not _recorded(folder, st_config.name) else None
        if stashed is not None:
            st_config.unlink()  # ST's own, just written: mmembed's save writes it (with the mmembed requirement)
        try:
            self.embedder.save(folder)
        except BaseException:
            if stashed is not None and not st_config.exists():
                st_config.write_bytes(stashed)
            raise


# ------------------------------------------------------------------------------------------------ helpers
def _as_mmembed_input(value: Any) -> Any:
    """An ST input as ``Embedder.encode`` takes it: a single chat message becomes a one-message conversation; a
    pair (a cross-encoder's input) is refused."""
    if isinstance(value, dict) and "role" in value and "content" in value:
        return [value]
    if isinstance(value, tuple):
        raise InputError(f"input {_preview(value)} is a pair; an embedding model embeds one input at a time. Pass "
                         f"the two inputs separately.")
    return value


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _named(message: str, inputs: list) -> str:
    """An ``encode`` error's ``inputs[i]`` (an index within ST's length-sorted batch) as the input itself."""
    match = re.search(r"inputs\[(\d+)\]", message)
    if match is None or int(match.group(1)) >= len(inputs):
        return message
    return message.replace(match.group(0), f"input {_preview(inputs[int(match.group(1))])}")


def _recorded(folder: Path, name: str) -> bool:
    """Whether an earlier mmembed save into ``folder`` wrote ``name`` (its ``mmembed_config.json`` lists it)."""
    try:
        return name in json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return False


__all__ = ["MMEmbedModule"]
