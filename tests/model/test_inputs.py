"""Input normalisation, prompt templates, and the errors each bad input raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmembed
from mmembed.errors import AdapterMismatchError, InputError, ModelNotFoundError
from mmembed.inputs import PromptTemplate, Renderer, to_item, to_items


def test_to_item_kinds(tmp_path, images):
    path = tmp_path / "a.png"
    images[0].save(path)
    assert to_item("hello", 0).modality == "text"
    assert to_item(str(path), 0).modality == "image"
    assert to_item(path, 0).modality == "image"
    assert to_item(images[0], 0).modality == "image"
    assert to_item({"text": "x", "image": str(path)}, 0).modality == "text+image"
    assert to_item({"text": "see cat.png"}, 0).text == "see cat.png"  # dict forces text
    messages = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "hi"}]}]
    item = to_item(messages, 0)
    assert item.modality == "messages" and item.has_image and len(item.images()) == 1
    items, single = to_items(messages)
    assert single and len(items) == 1
    items, single = to_items(["a", "b"])
    assert not single and [i.text for i in items] == ["a", "b"]


def test_lco_template_renders_exactly(qwen2_vl_path, images):
    model = mmembed.load(str(qwen2_vl_path), template=PromptTemplate(
        text="{text}\nSummarize the above text in one word:", image="{image}\nSummarize the above image in one word:",
        text_image="{image}{text}\nSummarize the above in one word:", chat=True))
    renderer = model.backbone.renderer
    r = renderer.render(to_item({"text": "a cat", "image": images[0]}, 0))
    assert r.text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a cat\nSummarize the above in one "
                      "word:<|im_end|>\n<|im_start|>assistant\n")
    assert r.prefix == "<|im_start|>user\n" and len(r.images) == 1
    r = renderer.render(to_item("a dog", 0), prompt="Instruct: find it\n")
    assert r.text == ("<|im_start|>user\nInstruct: find it\na dog\nSummarize the above text in one word:<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert r.prefix == "<|im_start|>user\nInstruct: find it\n"


def test_plain_template_and_response_slot(qwen2_emb_path):
    model = mmembed.load(str(qwen2_emb_path))
    r = model.backbone.renderer.render(to_item("hi", 0), prompt="Q: ")
    assert (r.text, r.prefix) == ("Q: hi", "Q: ")
    muco = Renderer(PromptTemplate(chat=True, system="You are a helpful assistant.", response="<|emb|>"),
                    model.backbone.processor, None)
    r = muco.render(to_item("hi", 0))
    assert r.text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                      "<|im_start|>assistant\n<|emb|><|im_end|>\n")
    assert r.prefix == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"


def test_template_validation():
    with pytest.raises(ValueError, match="lacks the slot"):
        PromptTemplate(text="no slot here")


def test_prompts_and_encode_queries(qwen2_path):
    model = mmembed.load(str(qwen2_path), prompts={"query": "Query: ", "document": ""}, dtype="float32")
    q = model.encode_queries(["a cat"])
    assert np.allclose(q, model.encode(["a cat"], prompt="Query: "), atol=1e-6)
    assert np.allclose(model.encode_documents(["a cat"]), model.encode(["a cat"]), atol=1e-6)
    assert not np.allclose(q, model.encode(["a cat"]), atol=1e-3)
    with pytest.raises(ValueError, match="not one of this model's prompts"):
        model.encode("a cat", prompt_name="passage")


# ---------------------------------------------------------------------------------------------- errors (point 8)
@pytest.fixture(scope="module")
def text_model(qwen2_path):
    return mmembed.load(str(qwen2_path))


def test_unsupported_input_type_names_its_index(text_model):
    with pytest.raises(InputError, match=r"inputs\[1\] has unsupported type int"):
        text_model.encode(["fine", 3])


def test_empty_string_names_its_index(text_model):
    with pytest.raises(InputError, match=r"inputs\[2\] is an empty string"):
        text_model.encode(["a", "b", "  "])


def test_image_given_to_text_only_model(text_model, images):
    with pytest.raises(InputError, match=r"inputs\[1\] holds an image.*text-only"):
        text_model.encode(["a caption", images[0]])


def test_missing_and_corrupt_images(text_model, tmp_path):
    with pytest.raises(InputError, match=r"inputs\[0\]: image file .*does not exist"):
        text_model.encode([str(tmp_path / "nope.jpg")])
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(InputError, match=r"inputs\[1\]\['image'\]: cannot read image .*corrupt"):
        text_model.encode(["ok", {"text": "x", "image": str(bad)}])
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (32, 32), "red").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(InputError, match="cannot read image"):
        text_model.encode(truncated)


def test_missing_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model at"):
        mmembed.load("surely-not/a-model-anywhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        mmembed.load(str(tmp_path / "empty"))


def test_missing_adapter(qwen2_path, tmp_path):
    with pytest.raises(ModelNotFoundError, match="adapter_config.json is missing"):
        mmembed.load(str(qwen2_path), adapter=str(tmp_path))


def test_adapter_for_another_base_model(qwen2_path, tmp_path):
    from peft import LoraConfig

    from mmembed import lora, testing

    other = mmembed.load(str(testing.build_tiny_qwen2(tmp_path / "wide", num_layers=3)))
    other.backbone.model = lora.attach(other.backbone.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    other.save(tmp_path / "adapter", adapter_only=True)
    with pytest.raises(AdapterMismatchError, match="does not fit"):
        mmembed.load(str(qwen2_path), adapter=str(tmp_path / "adapter"))


def test_more_bad_inputs_are_named(text_model, tmp_path):
    with pytest.raises(InputError, match=r"inputs\[0\]\['image'\]: .* is a URL"):
        text_model.encode([{"text": "x", "image": "https://example.com/cat.png"}])
    (tmp_path / "photos.jpg").mkdir()
    with pytest.raises(InputError, match=r"inputs\[0\]: .* is a folder"):
        text_model.encode(str(tmp_path / "photos.jpg"))
    with pytest.raises(InputError, match="inputs has unsupported type int"):
        text_model.encode(5)


def test_empty_and_iterable_inputs(text_model):
    empty = text_model.encode([])
    assert empty.shape == (0, 64)
    listed = text_model.encode(["a cat", "two dogs"])
    assert np.array_equal(text_model.encode(s for s in ["a cat", "two dogs"]), listed)
    assert np.array_equal(text_model.encode(np.array(["a cat", "two dogs"])), listed)
    tensor = text_model.encode(["a cat", "two dogs"], convert_to_tensor=True)
    assert tensor.shape == (2, 64) and np.array_equal(tensor.numpy(), listed)
    with pytest.raises(ValueError, match="truncate_dim=0"):
        text_model.encode("a cat", truncate_dim=0)
    with pytest.raises(ValueError, match="truncate_dim=65"):
        text_model.encode("a cat", truncate_dim=65)


def test_messages_need_a_chat_template(qwen2_path):
    model = mmembed.load(str(qwen2_path))
    model.backbone.processor.chat_template = None
    model.backbone.renderer.has_chat_template = False
    with pytest.raises(InputError, match=r"inputs\[1\] is a chat conversation.*no chat template"):
        model.encode(["ok", [{"role": "user", "content": "hi"}]])


def test_encode_queries_never_falls_back_to_another_prompt(qwen2_path):
    model = mmembed.load(str(qwen2_path), prompts={"document": "Doc: "}, default_prompt_name="document",
                         dtype="float32")
    assert np.array_equal(model.encode_queries("a cat"), model.encode("a cat", prompt=""))
    assert np.array_equal(model.encode_documents("a cat"), model.encode("a cat", prompt="Doc: "))
    assert np.array_equal(model.encode("a cat"), model.encode("a cat", prompt="Doc: "))  # the default prompt


def test_special_token_pooler_output_and_errors(qwen2_emb_path):
    model = mmembed.load(str(qwen2_emb_path), pooling={"mode": "special_token", "token": "<|emb|>"},
                         template=PromptTemplate(chat=True, response="<|emb|>"), dtype="float32")
    out = model.encode(["a cat", "two dogs"])
    assert isinstance(out, list) and [o.shape for o in out] == [(1, 64), (1, 64)]
    conversation = [{"role": "user", "content": "a cat"}, {"role": "assistant", "content": "<|emb|>"},
                    {"role": "user", "content": "two dogs"}, {"role": "assistant", "content": "<|emb|>"}]
    assert model.encode([conversation])[0].shape == (2, 64)  # the template's response is not added again
    # an instruction goes in front of the first user turn of a conversation
    prompted = model.encode([conversation], prompt="Find: ")[0]
    manual = [dict(conversation[0], content="Find: a cat")] + conversation[1:]
    assert np.array_equal(prompted, model.encode([manual])[0])
    plain = mmembed.load(str(qwen2_emb_path), pooling={"mode": "special_token", "token": "<|emb|>"})
    with pytest.raises(InputError, match=r"inputs\[1\]: no '<\|emb\|>' token"):
        plain.encode(["has <|emb|> inside", "has none"])


def test_mean_without_prompt_keeps_a_token_merged_with_the_prompt(qwen2_path):
    """'Query: ' + 'a' tokenizes as ['Qu','ery',':','Ġa']: the merged token is content and stays in the mean."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen2_path)
    base = AutoModel.from_pretrained(qwen2_path, dtype=torch.float32)
    model = mmembed.load(str(qwen2_path), pooling={"mode": "mean", "exclude_prefix": True}, normalize=False,
                         dtype="float32")
    prompt_ids = tokenizer("Query: ").input_ids
    for text in ["a", "a cat"]:
        full = tokenizer("Query: " + text).input_ids
        k = next(n for n, (a, b) in enumerate(zip(full + [None], prompt_ids + [None])) if a != b)
        assert k < len(prompt_ids)  # the merge happens
        with torch.no_grad():
            states = base(input_ids=torch.tensor([full])).last_hidden_state[0]
        ours = model.encode(text, prompt="Query: ", cache_prompt=False)
        assert np.abs(ours - states[k:].mean(0).numpy()).max() < 1e-5
        assert np.abs(model.encode(text, prompt="Query: ") - ours).max() < 1e-5  # cached path too


# ------------------------------------------------------------------------------- issue 27: every input named
def test_invalid_unicode_names_its_index(text_model):
    with pytest.raises(InputError, match=r"^inputs\[1\]: the text holds '\\ud800' at character 4, a lone surrogate"):
        text_model.encode(["ok", "bad \ud800"])
    with pytest.raises(InputError, match=r"^inputs\[0\]\['text'\]: the text holds"):
        text_model.encode([{"text": "\udcff"}])
    with pytest.raises(InputError, match=r"^inputs\[0\]\[1\]\.content: the text holds"):
        text_model.encode([[{"role": "user", "content": "hi"}, {"role": "user", "content": "x\ud800"}]])
    with pytest.raises(InputError, match=r"^prompt: the text holds"):
        text_model.encode(["ok"], prompt="\ud800 ")


def test_bytes_and_sets_are_refused_with_the_fix(text_model):
    with pytest.raises(InputError, match=r"^inputs is bytes; .*encode\(data\.decode\('utf-8'\)\)"):
        text_model.encode(b"hello")
    with pytest.raises(InputError, match=r"^inputs\[1\] is bytes; .*value\.decode\('utf-8'\)"):
        text_model.encode(["ok", b"hello"])
    for inputs in ({"a", "b"}, frozenset({"a", "b"})):
        with pytest.raises(InputError, match=r"^inputs is a (set|frozenset), whose order is arbitrary.*Pass a list"):
            text_model.encode(inputs)


def test_image_the_processor_refuses_names_its_index(qwen2_vl_path, images):
    model = mmembed.load(str(qwen2_vl_path))
    wide = Image.new("RGB", (5000, 1), "white")
    with pytest.raises(InputError, match=r"^inputs\[2\]: the model's processor cannot take it \(ValueError: absolute "
                                         r"aspect ratio .*image size 5000x1\)\. Resize or pad the image"):
        model.encode(["a caption", images[0], wide, {"text": "x", "image": images[1]}])
    with pytest.raises(InputError, match=r"^inputs\[0\]: the model's processor cannot take it"):
        model.encode([{"text": "x", "image": wide}])


def test_truncation_is_reported_once_per_call(qwen2_path, caplog):
    model = mmembed.load(str(qwen2_path), max_length=16)
    inputs = ["short"] * 10
    inputs[3] = inputs[7] = "word " * 40
    with caplog.at_level("WARNING", logger="mmembed"):
        model.encode(inputs)
        model.encode(["short", "also short"])
    assert [r.getMessage() for r in caplog.records] == [
        ("2 of 10 inputs were longer than max_length=16 tokens and were shortened (inputs[3], inputs[7]); load the "
         "model with a larger max_length to keep them whole.")]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmembed"):
        model.encode(["word " * 40] * 12)
    assert [r.getMessage() for r in caplog.records] == [
        ("12 of 12 inputs were longer than max_length=16 tokens and were shortened (inputs[0], inputs[1], inputs[2], "
         "inputs[3], inputs[4], inputs[5], inputs[6], inputs[7], inputs[8], inputs[9], ... 2 more); load the model "
         "with a larger max_length to keep them whole.")]


def test_progress_bar_off_unless_a_terminal_or_asked(text_model, capsys):
    inputs = [f"sentence {i}" for i in range(300)]
    text_model.encode(inputs, batch_size=64)
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal: no bar, even for many inputs
    text_model.encode(inputs, batch_size=64, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "Encoding: 100%" in err and err.count("\r") <= 3  # shown when asked; refreshed rarely in a log


def test_evaluator_chunks_name_the_input_by_its_overall_index(text_model):
    from mmembed.eval.encoding import encode_side

    with pytest.raises(InputError, match=r"^inputs\[5\] is an empty string"):
        encode_side(text_model, ["a", "b", "c", "d", "e", " "], chunk_size=4)
