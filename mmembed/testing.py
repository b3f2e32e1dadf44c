"""Tiny random-weight models of real architectures (Qwen2, Qwen2-VL, Qwen2.5-VL, LLaVA), with offline tokenizers and processors.

Each builder writes a complete model folder (config, safetensors, tokenizer, processor, chat template) in well
under a second, exactly as a real checkpoint is laid out, so tests and recipe smoke runs exercise the real
loading path: ``mmembed.load(build_tiny_qwen2_vl(tmp_path))``. Weights are seeded and deterministic.
:func:`qwen2_vl_2b_random` builds a real-size Qwen2-VL-2B embedder with random weights in memory instead (benchmarks:
``bench/muco.py``, ``bench/gpu.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .model_folder import quiet_transformers

if TYPE_CHECKING:
    from .embedder import Embedder
    from .inputs import PromptTemplate

CORPUS = [
    "A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.",
    "A cat sits on the mat.", "Two dogs run in the park.", "Summarize the above text in one word:",
    "Instruct: Retrieve semantically similar text.\nQuery: ", "the quick brown fox jumps over the lazy dog",
    "Read and analyze the following text, then you need to provide your reasoning.",
]

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]
EMB_TOKEN = "<|emb|>"


def chat_template(image_markup: str) -> str:
    """A Qwen-style chat template; ``image_markup`` is what one image part renders to."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image_markup +
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def build_tokenizer(specials: list[str], image_markup: str = "", vocab_size: int = 400, emb_token: bool = False):
    """A byte-level BPE ``Qwen2Tokenizer`` trained in memory on a few sentences (no files, no network)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tokenizer = Qwen2Tokenizer(vocab=byte_vocab, merges=[])
    tokenizer = tokenizer.train_new_from_iterator(CORPUS * 4, vocab_size=vocab_size, show_progress=False)
    extra = specials + ([EMB_TOKEN] if emb_token else [])
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = chat_template(image_markup)
    return tokenizer


def _text_config(tokenizer, **overrides) -> dict:
    config = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None}
    config.update(overrides)
    return config


def _save(model, processor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():  # no bar, and no DeepSpeed import (which prints on stdout), as in Embedder.save
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return folder


def build_tiny_qwen2(folder: str | Path, *, emb_token: bool = False, num_layers: int = 2, seed: int = 0) -> Path:
    """A text-only ``Qwen2ForCausalLM`` (about 100k parameters) with a chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(QWEN_SPECIALS[:2], emb_token=emb_token)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**_text_config(tokenizer, num_hidden_layers=num_layers)))
    return _save(model, tokenizer, Path(folder))


def _build_qwen_vl(folder: str | Path, config_cls, model_cls, vision_config: dict, emb_token: bool, seed: int,
                   initializer_range: float = 0.02) -> Path:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .processing import processor_class_for

    markup = "<|vision_start|><|image_pad|><|vision_end|>"
    tokenizer = build_tokenizer(QWEN_SPECIALS, markup, emb_token=emb_token)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = config_cls(
        text_config=_text_config(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "mrope_section": [2, 3, 3]},
                                 initializer_range=initializer_range),
        vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, depth=2, num_heads=2,
                           initializer_range=initializer_range, **vision_config),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = model_cls(config)
    processor_cls = processor_class_for(type(config))
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               min_pixels=56 * 56, max_pixels=112 * 112)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              chat_template=tokenizer.chat_template)
    return _save(model, processor, Path(folder))


def build_tiny_qwen2_vl(folder: str | Path, *, emb_token: bool = False, seed: int = 0,
                        initializer_range: float = 0.02) -> Path:
    """A ``Qwen2VLForConditionalGeneration`` with a 2-layer vision tower and an image-only processor.

    ``initializer_range`` is the weights' init std. transformers' 0.02 suits widths near 1,000; at width 64 it
    shrinks every signal ~6x per linear layer, so the image barely reaches the last token. Larger is not better:
    at 0.25 the attention logits are so large that the last token's attention is nearly one-hot (entropy 1.4 nats
    over 90 tokens) with 0.000 of its mass on the image, so no gradient reaches the image path and LoRA training
    stays at chance (measured on MuCo packs). ``1 / sqrt(64)`` = 0.125 keeps both: soft attention (entropy 4.1 nats,
    2-3 % on the 4 image tokens) and signals that do not shrink; the learning runs use 0.125."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    return _build_qwen_vl(folder, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                          {"embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}, emb_token, seed, initializer_range)


def build_tiny_qwen2_5_vl(folder: str | Path, *, emb_token: bool = False, seed: int = 0) -> Path:
    """A ``Qwen2_5_VLForConditionalGeneration`` (windowed vision attention) with an image-only processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return _build_qwen_vl(folder, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64,
                           "fullatt_block_indexes": [1], "window_size": 56}, emb_token, seed)


def build_tiny_llava(folder: str | Path, *, emb_token: bool = False, seed: int = 0) -> Path:
    """A ``LlavaForConditionalGeneration`` (CLIP vision tower + Qwen2 language model) with its processor."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tokenizer(QWEN_SPECIALS[:2] + ["<image>"], "<image>", emb_token=emb_token)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=tokenizer.chat_template,
                               image_token="<image>", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=32),
        text_config=Qwen2Config(**_text_config(tokenizer)), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    return _save(model, processor, Path(folder))


# Qwen2-VL-2B-Instruct's config.json (the vision tower's out hidden_size is the LM's hidden size)
QWEN2_VL_2B_TEXT = {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                    "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                        "mrope_section": [16, 24, 24]}}
QWEN2_VL_2B_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4, "num_heads": 16,
                      "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "hidden_act": "quick_gelu"}
#: the image processor's pixel limits MuCo trains with (256 to 1280 visual tokens of 28 x 28 pixels)
MUCO_MIN_PIXELS, MUCO_MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28


def qwen2_vl_2b_random(template: PromptTemplate, pooling: str | dict = "last", *, layers: int | None = None,
                       dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu", seed: int = 0,
                       min_pixels: int = MUCO_MIN_PIXELS, max_pixels: int = MUCO_MAX_PIXELS) -> Embedder:
    """An :class:`~mmembed.embedder.Embedder` over a randomly initialised Qwen2-VL-2B-Instruct-sized model, built in
    memory on ``device`` (no weights on disk): the real config (:data:`QWEN2_VL_2B_TEXT`,
    :data:`QWEN2_VL_2B_VISION`), :func:`build_tokenizer`'s offline byte-level tokenizer with ``<|emb|>`` (a few
    hundred tokens, so texts take about 3x more tokens than with Qwen's vocabulary) and an image-only processor.
    The embedder holds the ``Qwen2VLModel`` (what ``mmembed.load`` gives for a real checkpoint). ``layers`` shrinks
    both the language model and the vision tower (CPU smoke runs); ``seed`` seeds the weights."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .backbone import Backbone
    from .embedder import Embedder
    from .processing import processor_class_for

    markup = "<|vision_start|><|image_pad|><|vision_end|>"
    tokenizer = build_tokenizer(QWEN_SPECIALS, markup, emb_token=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = {**QWEN2_VL_2B_TEXT, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None}
    vision = dict(QWEN2_VL_2B_VISION)
    if layers:
        text["num_hidden_layers"] = vision["depth"] = layers
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    processor_cls = processor_class_for(type(config))
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               min_pixels=min_pixels, max_pixels=max_pixels)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              chat_template=tokenizer.chat_template)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    try:
        with torch.device(device):
            full = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model = full.model  # Qwen2VLModel: what AutoModel (mmembed.load) gives for a real checkpoint
    del full
    backbone = Backbone(model.eval(), processor, template, name_or_path="qwen2-vl-2b-random")
    return Embedder(backbone, pooling)


def sample_images(n: int = 3, size: tuple[int, int] = (64, 48)):
    """``n`` distinct deterministic RGB PIL images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB") for _ in range(n)]
