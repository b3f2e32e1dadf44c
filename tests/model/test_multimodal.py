"""Text, image and text+image inputs on tiny Qwen2-VL and LLaVA, checked against a plain transformers forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmembed
from mmembed.inputs import PromptTemplate

TEMPLATE = PromptTemplate(text="{text}\nSummarize the above text in one word:",
                          image="{image}\nSummarize the above image in one word:",
                          text_image="{image}{text}\nSummarize the above in one word:", chat=True)


def _reference(path, content):
    """Last-token state of one conversation, computed with transformers alone."""
    from transformers import AutoModel

    from mmembed.processing import load_processor

    processor = load_processor(str(path))
    base = AutoModel.from_pretrained(path, dtype=torch.float32)
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [p["image"] for p in content if p["type"] == "image"] or None
    batch = processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return base(**batch).last_hidden_state[0, -1].numpy()


def test_text_image_and_pair_match_reference(vlm_path, images):
    model = mmembed.load(str(vlm_path), template=TEMPLATE, pooling="last", normalize=False, dtype="float32")
    inputs = ["a cat on a mat", images[0], {"text": "a red square", "image": images[1]}]
    ours = model.encode(inputs)
    contents = [
        [{"type": "text", "text": "a cat on a mat\nSummarize the above text in one word:"}],
        [{"type": "image", "image": images[0]}, {"type": "text", "text": "\nSummarize the above image in one word:"}],
        [{"type": "image", "image": images[1]}, {"type": "text", "text": "a red square\nSummarize the above in one word:"}],
    ]
    for i, content in enumerate(contents):
        assert np.abs(ours[i] - _reference(vlm_path, content)).max() < 1e-5


def test_images_change_the_embedding(vlm_path, images, tmp_path):
    model = mmembed.load(str(vlm_path), template=TEMPLATE, dtype="float32")
    path = tmp_path / "img.png"
    images[2].save(path)
    vectors = model.encode([images[0], images[1], str(path), images[2]])
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4
    assert np.abs(vectors[2] - vectors[3]).max() < 1e-6  # a path and the same PIL image agree


def test_chat_messages_with_images(vlm_path, images):
    model = mmembed.load(str(vlm_path), template=PromptTemplate(chat=True), normalize=False, dtype="float32")
    content = [{"type": "image", "image": images[0]}, {"type": "text", "text": "what is this?"}]
    ours = model.encode([[{"role": "user", "content": content}]])
    assert np.abs(ours[0] - _reference(vlm_path, content)).max() < 1e-5


def test_batch_and_alone_agree_with_images(vlm_path, images):
    model = mmembed.load(str(vlm_path), template=TEMPLATE, dtype="float32")
    inputs = [images[0], {"text": "a longer caption about a picture", "image": images[1]}, "text only", images[2]]
    together = model.encode(inputs, batch_size=4)
    for i, x in enumerate(inputs):
        assert np.abs(model.encode(x) - together[i]).max() < 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_qwen2_vl_padding_side_with_images(qwen2_vl_path, images, side):
    model = mmembed.load(str(qwen2_vl_path), template=TEMPLATE, padding_side=side, dtype="float32")
    assert model.backbone.tokenizer.padding_side == side
    a = model.encode([{"text": "short", "image": images[0]}, {"text": "a much longer text " * 3, "image": images[1]}])
    b = np.stack([model.encode({"text": "short", "image": images[0]}),
                  model.encode({"text": "a much longer text " * 3, "image": images[1]})])
    assert np.abs(a - b).max() < 1e-5
