"""The encoder: an :class:`~mmembed.Embedder` in mteb's v2 encoder protocol (``encode`` of a DataLoader of batches,
``similarity``, ``similarity_pairwise``, ``mteb_model_meta``), and the ``ModelMeta`` (name, revision) mteb files its
results under. ``MTEBEncoder`` subclasses mteb's ``AbsEncoder`` and is built on first access, so mteb loads lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import MMEmbedError
from ..encoding import encode_split

if TYPE_CHECKING:
    from mteb.models.model_meta import ModelMeta

    from ...embedder import Embedder

logger = logging.getLogger(__name__)


def _new_encoder_class():
    """``MTEBEncoder`` subclasses mteb's ``AbsEncoder``; the class is built on first use so mteb loads lazily."""
    from mteb.models.abs_encoder import AbsEncoder

    class _MTEBEncoder(_EncoderMixin, AbsEncoder):
        pass

    _MTEBEncoder.__name__ = _MTEBEncoder.__qualname__ = "MTEBEncoder"
    _MTEBEncoder.__module__ = __package__  # the public name: mmembed.eval.mteb.MTEBEncoder
    _MTEBEncoder.__doc__ = _EncoderMixin.__doc__
    return _MTEBEncoder


class _EncoderMixin:
    """An :class:`~mmembed.Embedder` in mteb's v2 encoder protocol.

    Args:
        embedder: the model.
        name: the model name in mteb's results (``"org/name"``; a name without ``/`` gets ``"local/"`` in front).
            Default: the model's hub id, or ``"local/<folder name>"`` for a local path.
        revision: the revision in mteb's results. Default: a hash of the embedder's configuration, its model config
            and a weight fingerprint (so two different local models never share cached results).
        batch_size: used when mteb passes no ``batch_size`` in its encode kwargs.

    ``encode`` takes mteb's batches: texts (``batch["text"]``), images (``batch["image"]``, PIL images) or both (paired
    into ``{"text", "image"}`` inputs). An empty text with no image gets a zero vector (cosine 0 to everything).
    It encodes through :func:`~mmembed.eval.encoding.encode_split`: on several processes running the same mteb flow
    (``mmembed eval mteb`` under ``accelerate launch``), each encodes a share of every call.
    """

    def __init__(self, embedder: Embedder, *, name: str | None = None, revision: str | None = None,
                 batch_size: int = 32) -> None:
        self.model = embedder
        self.embedder = embedder
        self.name = name
        self.revision = revision
        self.batch_size = batch_size
        self.chunk_size = 8192  # inputs per embedder.encode call (it sorts each call's inputs by length)
        self.image_chunk_size = 1024  # ... or fewer, once this many of them hold an image
        self._meta: tuple[Any, ModelMeta] | None = None

    # -------------------------------------------------------------------------------------------- prompts
    @property
    def model_prompts(self) -> dict[str, str]:  # read by AbsEncoder.get_prompt_name
        return dict(self.embedder.prompts)

    def prompt_for(self, task_metadata: Any, prompt_type: Any = None) -> tuple[str | None, str]:
        """``(prompt name, prompt text)`` for a task and a prompt type (``query`` / ``document`` / None), by mteb's
        priority; ``(None, "")`` when no key of ``embedder.prompts`` matches."""
        from mteb.models.abs_encoder import get_prompt_name

        prompts = self.embedder.prompts
        if prompt_type is not None and not hasattr(prompt_type, "value"):
            from mteb.types import PromptType

            prompt_type = PromptType(prompt_type)
        name = get_prompt_name(prompts, task_metadata, prompt_type) if prompts else None
        return (name, prompts[name]) if name is not None else (None, "")

    def unused_prompt_keys(self, task_names: Any = ()) -> list[str]:
        """Keys of ``embedder.prompts`` that mteb never selects: not a registry task, a task type, a prompt type or
        one of ``task_names`` (local tasks), alone or followed by ``-query`` / ``-document``."""
        from mteb.models.abs_encoder import AbsEncoder

        if not self.embedder.prompts:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            level = logging.getLogger("mteb").level
            logging.getLogger("mteb").setLevel(logging.ERROR)
            try:
                valid, _ = AbsEncoder.validate_task_to_prompt_name(dict(self.embedder.prompts),
                                                                   raise_for_invalid_keys=False)
            finally:
                logging.getLogger("mteb").setLevel(level)
        local = set(task_names)
        return sorted(key for key in set(self.embedder.prompts) - set(valid or {})
                      if key not in local and key.rsplit("-", 1)[0] not in local)

    # -------------------------------------------------------------------------------------------- encode
    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None,
               **kwargs: Any) -> np.ndarray:
        prompt_name, prompt = self.prompt_for(task_metadata, prompt_type)
        logger.debug("%s/%s/%s %s: prompt %r", task_metadata.name, hf_subset, hf_split,
                     getattr(prompt_type, "value", prompt_type), prompt_name)
        batch_size = int(kwargs.get("batch_size") or self.batch_size)
        chunks: list[np.ndarray] = []
        pending: list[Any] = []
        images = 0
        for batch in inputs:  # encoded in chunks, so a large image corpus is never all decoded at once
            items = _batch_items(batch, task_metadata.name)
            pending += items
            images += sum(1 for item in items if item is not None and not (isinstance(item, dict) and
                                                                            "image" not in item))
            if len(pending) >= self.chunk_size or images >= self.image_chunk_size:
                chunks.append(self._encode_items(pending, prompt, batch_size, kwargs.get("show_progress_bar"),
                                                 task_metadata.name))
                pending, images = [], 0
        if pending or not chunks:
            chunks.append(self._encode_items(pending, prompt, batch_size, kwargs.get("show_progress_bar"),
                                             task_metadata.name))
        return np.concatenate(chunks)

    def _encode_items(self, items: list[Any], prompt: str, batch_size: int, show_progress_bar: bool | None,
                      task_name: str) -> np.ndarray:
        out = np.zeros((len(items), self.embedder.embedding_dim), dtype=np.float32)
        keep = [i for i, item in enumerate(items) if item is not None]
        if len(keep) < len(items):
            logger.warning("%s: %d empty input(s) (no text, no image) get a zero vector.", task_name,
                           len(items) - len(keep))
        if keep:
            vectors = encode_split(self.embedder, [items[i] for i in keep], prompt=prompt, batch_size=batch_size,
                                   show_progress_bar=show_progress_bar, convert_to_numpy=True)
            if isinstance(vectors, list):  # a special-token pooler: one row per token occurrence
                if any(v.shape[0] != 1 for v in vectors):
                    raise MMEmbedError("this model gives several vectors for some inputs (special-token pooling "
                                       "with repeated tokens); mteb needs one vector per input.")
                vectors = np.concatenate(vectors)
            out[keep] = np.asarray(vectors, dtype=np.float32)
        return out

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    # -------------------------------------------------------------------------------------------- metadata
    @property
    def mteb_model_meta(self) -> ModelMeta:
        """mteb's ``ModelMeta`` of the embedder (rebuilt when its prompts or options change)."""
        embedder = self.embedder
        key = (json.dumps(embedder.prompts, sort_keys=True), embedder.truncate_dim, self.name, self.revision,
               embedder.embedding_dim)
        if self._meta is None or self._meta[0] != key:
            self._meta = (key, build_model_meta(embedder, name=self.name, revision=self.revision))
        return self._meta[1]


def _batch_items(batch: dict, task_name: str) -> list[Any]:
    """mteb batch -> mmembed inputs (texts wrapped as ``{"text": ...}`` so a text is never read as an image path)."""
    for key in ("audio", "video"):
        if batch.get(key) is not None:
            raise MMEmbedError(f"mteb task '{task_name}' gives {key} inputs; mmembed embeds text and images only.")
    texts = batch.get("text")
    images = batch.get("image")
    if texts is None and images is None:
        raise MMEmbedError(f"mteb task '{task_name}' gave a batch with neither 'text' nor 'image' (keys: "
                           f"{sorted(batch)}).")
    n = len(texts) if texts is not None else len(images)
    items: list[Any] = []
    for i in range(n):
        text = texts[i] if texts is not None else None
        image = _as_pil(images[i]) if images is not None else None
        if text is not None and not isinstance(text, str):
            text = str(text)
        if text is not None and not text.strip():
            text = None
        if text is not None and image is not None:
            items.append({"text": text, "image": image})
        elif image is not None:
            items.append(image)
        elif text is not None:
            items.append({"text": text})
        else:
            items.append(None)
    return items


def _as_pil(image: Any) -> Any:
    if image is None:
        return None
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and (image.get("bytes") or image.get("path")):  # an undecoded datasets Image
        import io

        return Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):  # CHW
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def model_name(embedder: Embedder, name: str | None = None) -> str:
    """The ``"org/name"`` mteb gives to results: ``name``, the hub id, or ``"local/<folder or file name>"``."""
    if name:
        return name if "/" in name else f"local/{name}"
    source = str(embedder.backbone.name_or_path or "model")
    path = Path(source).expanduser()
    if path.exists():
        return f"local/{path.resolve().name or 'model'}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source):  # a hub id
        return source
    cleaned = re.sub(r"[^\w.-]+", "_", source).strip("_")
    return f"local/{cleaned or 'model'}"


def model_revision(embedder: Embedder) -> str:
    """A 12-hex-digit hash of the chain config, the model config and the weights fingerprint
    (:func:`~mmembed.eval.report.weights_fingerprint`: every parameter counts, a LoRA adapter's included)."""
    from ..report import weights_fingerprint

    digest = hashlib.sha256(json.dumps(embedder.get_config(), sort_keys=True, default=str).encode())
    config = embedder.backbone.config
    digest.update(config.to_json_string(use_diff=False).encode() if hasattr(config, "to_json_string")
                  else repr(config).encode())
    digest.update(weights_fingerprint(embedder.backbone.model).encode())
    return digest.hexdigest()[:12]


def build_model_meta(embedder: Embedder, *, name: str | None = None, revision: str | None = None) -> ModelMeta:
    """mteb's ``ModelMeta`` for an embedder: name, revision, embed_dim, n_parameters, max_tokens, modalities,
    cosine similarity, PyTorch, ``use_instructions`` = whether it has prompts."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    return ModelMeta.create_empty(overwrites={
        "name": model_name(embedder, name),
        "revision": revision or model_revision(embedder),
        "embed_dim": embedder.embedding_dim,
        "n_parameters": sum(p.numel() for p in embedder.parameters()),
        "max_tokens": embedder.backbone.max_length,
        "modalities": ["text", "image"] if embedder.backbone.supports_images else ["text"],
        "similarity_fn_name": ScoringFunction.COSINE,  # the enum: create_empty skips pydantic's conversion
        "framework": ["PyTorch"],
        "use_instructions": bool(embedder.prompts),
        "open_weights": True,
    })


def __getattr__(attr: str) -> Any:  # MTEBEncoder is created on first access (it subclasses mteb's AbsEncoder)
    if attr == "MTEBEncoder":
        cls = _new_encoder_class()
        globals()["MTEBEncoder"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def as_encoder(model: Any, **kwargs: Any) -> Any:
    """An :class:`MTEBEncoder` for ``model`` (returned as is when it already is one)."""
    cls = globals().get("MTEBEncoder") or __getattr__("MTEBEncoder")
    return model if isinstance(model, cls) else cls(model, **kwargs)

