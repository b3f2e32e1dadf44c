"""Processors that work without torchvision.

The processors of Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM and others require a video processor, and transformers'
video processors need torchvision. mmembed embeds images and text only, so for such processors it derives an
*image-only* subclass (same class, without the video argument) and registers it with ``AutoProcessor`` so a saved
folder round-trips. Which processor class applies is read from the saved processor config or from the model
config's type, never from the model's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PreTrainedConfig
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

_IMAGE_ONLY: dict[type, type] = {}


def image_only_processor_class(base: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A subclass of ``base`` without its ``video_processor`` argument (cached per base class)."""
    if base in _IMAGE_ONLY:
        return _IMAGE_ONLY[base]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                      chat_template=chat_template, **kwargs)

    cls = type(f"ImageOnly{base.__name__}", (base,), {"__init__": __init__, "__module__": __name__,
                                                       "__doc__": f"{base.__name__} without video support."})
    globals()[cls.__name__] = cls  # importable by name, so pickling and processor_class lookups work
    _IMAGE_ONLY[base] = cls
    return cls


def needs_image_only(processor_cls: type | None) -> bool:
    return (processor_cls is not None and issubclass(processor_cls, ProcessorMixin)
            and "video_processor" in processor_cls.get_attributes() and not is_torchvision_available())


def processor_class_for(config_class: type[PreTrainedConfig]) -> type[ProcessorMixin]:
    """The processor class to build in code, from an image processor and a tokenizer, for a model config:
    transformers' own, or its image-only variant where that class also takes a video processor (registered with
    ``AutoProcessor``, so the saved folder loads back with or without torchvision)."""
    if config_class not in PROCESSOR_MAPPING:
        raise ValueError(f"transformers has no processor for {config_class.__name__}; build a tokenizer instead.")
    base = PROCESSOR_MAPPING[config_class]
    base = getattr(base, "__bases__", (base,))[0] if base in _IMAGE_ONLY.values() else base
    if "video_processor" not in base.get_attributes():
        return base
    cls = image_only_processor_class(base)
    AutoProcessor.register(config_class, cls, exist_ok=True)
    return cls


def _saved_processor_class(path: str | Path) -> type | None:
    config_file = Path(path) / "processor_config.json"
    if not config_file.is_file():
        return None
    name = json.loads(config_file.read_text()).get("processor_class")
    if name and name.startswith("ImageOnly"):
        name = name[len("ImageOnly"):]
    return processor_class_from_name(name) if name else None


def load_processor(path: str, config: PreTrainedConfig | None = None, **kwargs: Any) -> Any:
    """Load the processor (or tokenizer, for text-only models) of the model at ``path``."""
    config = config if config is not None else AutoConfig.from_pretrained(path, **kwargs)
    base = _saved_processor_class(path) if Path(path).is_dir() else None
    if base is None and type(config) in PROCESSOR_MAPPING:
        base = PROCESSOR_MAPPING[type(config)]
    if needs_image_only(base):
        cls = image_only_processor_class(base)
        AutoProcessor.register(type(config), cls, exist_ok=True)
        return cls.from_pretrained(path, **kwargs)
    if not hasattr(config, "vision_config"):
        return AutoTokenizer.from_pretrained(path, **kwargs)
    return AutoProcessor.from_pretrained(path, **kwargs)


def tokenizer_of(processor: Any) -> Any:
    """The text tokenizer inside a processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)
