"""Every folder ``Embedder.save`` writes loads in sentence-transformers with the vectors ``mmembed.load`` gives (its
own modules where it can, mmembed's module otherwise), or is refused there with the reason; mteb's
sentence-transformers path gives the same vectors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer

import mmembed
from mmembed import st_format
from mmembed.errors import InputError, ModelFolderError
from mmembed.inputs import PromptTemplate
from mmembed.rationale import RationaleConfig

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.", "hi"]
PROMPTS = {"query": "Instruct: Retrieve semantically similar text.\nQuery: ", "document": ""}
SUFFIX = "{text}\nSummarize the above text in one word:"
EMB = "<|emb|>"


def _cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _same(st_vectors, ours, atol=1e-5):
    assert st_vectors.shape == ours.shape and st_vectors.dtype == np.float32
    assert np.all(_cos(st_vectors, ours) > 0.9999) and np.abs(st_vectors - ours).max() < atol


def _st(folder, **kwargs):
    return SentenceTransformer(str(folder), device="cpu", trust_remote_code=True, **kwargs)


def _types(folder):
    return [m["type"] for m in json.loads((Path(folder) / "modules.json").read_text())]


def readme_sentences() -> list[str]:
    """The sentences of the README's sentence-transformers snippet (the one that loads the saved default model)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL) if "SentenceTransformer(" in b)
    return re.findall(r'"([^"]+\.)"', block.split(".encode(", 1)[1])


# ------------------------------------------------------------------------------------------------ folders
KINDS = {
    "chat-suffix-system": {"template": PromptTemplate(text=SUFFIX, chat=True, system="Embed this."),
                           "prompts": PROMPTS},
    "suffix": {"template": PromptTemplate(text=SUFFIX), "prompts": PROMPTS, "default_prompt_name": "query"},
    "chat-mean-without-prefix": {"template": PromptTemplate(chat=True, system="You embed text."), "prompts": PROMPTS,
                                 "pooling": {"mode": "mean", "exclude_prefix": True}},
    "layer-cut": {"layer": 1, "pooling": "mean"},
    "truncate-dim": {"truncate_dim": 16, "prompts": PROMPTS},
    "suffix-cls-not-normalised-left": {"template": PromptTemplate(text=SUFFIX), "pooling": "cls", "normalize": False,
                                       "padding_side": "left"},
}


@pytest.fixture(scope="module")
def saved(qwen2_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("st_kinds")
    for name, options in KINDS.items():
        mmembed.load(str(qwen2_path), dtype="float32", **options).save(root / name)
    return root


@pytest.fixture(scope="module")
def default_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("st_default") / "default"
    mmembed.load().save(folder)
    return folder


@pytest.fixture(scope="module")
def vlm_folder(qwen2_vl_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("st_vlm") / "vlm"
    template = PromptTemplate(text=SUFFIX, image="{image}\nSummarize the above image in one word:",
                              text_image="{image}{text}\nSummarize the above in one word:", chat=True)
    mmembed.load(str(qwen2_vl_path), template=template, prompts=PROMPTS, dtype="float32").save(folder)
    return folder


# ------------------------------------------------------------------------------------------------ same vectors
def test_the_saved_default_model_gives_mmembeds_vectors_in_sentence_transformers(default_folder):
    sentences = readme_sentences()
    assert len(sentences) == 3 and sentences[0] == "A man is playing a guitar."
    assert _types(default_folder) == [st_format.MODULE_TYPE]
    vectors = _st(default_folder).encode(sentences)
    assert np.all(_cos(vectors, mmembed.encode(sentences)) > 0.9999)  # was 0.30: ST's silent mean-pooling fallback
    _same(vectors, mmembed.load(str(default_folder)).encode(sentences))


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_folder_kind_gives_the_same_vectors(saved, kind):
    folder = saved / kind
    assert _types(folder) == [st_format.MODULE_TYPE]  # none of these has an ST equivalent
    ours, st = mmembed.load(str(folder)), _st(folder)
    _same(st.encode(TEXTS), ours.encode(TEXTS))
    _same(st.encode_query(TEXTS), ours.encode_queries(TEXTS))
    _same(st.encode(TEXTS[0]), ours.encode(TEXTS[0]))
    _same(st.encode(TEXTS, prompt="Represent this: "), ours.encode(TEXTS, prompt="Represent this: "))
    assert st.get_embedding_dimension() == ours.embedding_dim == (16 if kind == "truncate-dim" else 64)
    if ours.prompts:
        assert st.prompts == ours.prompts and st.default_prompt_name == ours.default_prompt_name
    if kind == "layer-cut":  # the cut is applied: the full depth gives other vectors
        assert np.abs(mmembed.load(str(folder), layer=-1).encode(TEXTS) - st.encode(TEXTS)).max() > 1e-3


def test_vlm_images_and_text_image_pairs_give_the_same_vectors(vlm_folder, images):
    ours, st = mmembed.load(str(vlm_folder)), _st(vlm_folder)
    assert set(st.modalities) >= {"text", "image", ("image", "text"), "message"}
    pairs = [{"text": "a cat on a mat", "image": images[1]}, {"text": "two dogs", "image": images[2]}]
    _same(st.encode([images[0], images[1]]), ours.encode([images[0], images[1]]), atol=1e-4)
    _same(st.encode(images[0]), ours.encode(images[0]), atol=1e-4)
    _same(st.encode(pairs), ours.encode(pairs), atol=1e-4)
    _same(st.encode_query(pairs), ours.encode_queries(pairs), atol=1e-4)
    mixed = ["a caption", images[0], pairs[0]]
    _same(st.encode(mixed), ours.encode(mixed), atol=1e-4)
    conversation = [{"role": "user", "content": [{"type": "image", "image": images[2]},
                                                 {"type": "text", "text": "what is this?"}]}]
    _same(st.encode([conversation]), ours.encode([conversation]), atol=1e-4)


def test_a_special_token_model_with_one_token_per_input_gives_the_same_vectors(qwen2_emb_path, tmp_path):
    model = mmembed.load(str(qwen2_emb_path), template=PromptTemplate(chat=True, response=EMB),
                         pooling={"mode": "special_token", "token": EMB}, dtype="float32")
    model.save(tmp_path / "emb")
    st = _st(tmp_path / "emb")
    _same(st.encode(TEXTS), np.stack([v[0] for v in mmembed.load(str(tmp_path / "emb")).encode(TEXTS)]))
    with pytest.raises(InputError, match=r"^input 'two <\|emb\|> tokens' gives 2 vectors \(one per '<\|emb\|>' "
                                         r"token\), but sentence-transformers takes one vector per input"):
        st.encode(["fine", "two <|emb|> tokens"])


def test_an_adapter_only_folder_loads_on_its_recorded_base(qwen2_path, tmp_path):
    from peft import LoraConfig

    from mmembed import lora

    model = mmembed.load(str(qwen2_path), template=PromptTemplate(text=SUFFIX, chat=True), dtype="float32")
    model.backbone.model = lora.attach(model.backbone.model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                        target_modules=["q_proj", "v_proj"]))
    model.save(tmp_path / "adapter", adapter_only=True)
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    assert _types(tmp_path / "adapter") == [st_format.MODULE_TYPE]
    _same(_st(tmp_path / "adapter").encode(TEXTS), model.encode(TEXTS))


def test_a_natively_reproducible_folder_keeps_sentence_transformers_own_modules(qwen2_path, tmp_path):
    model = mmembed.load(str(qwen2_path), pooling={"mode": "mean", "exclude_prefix": True}, prompts=PROMPTS,
                         dtype="float32")
    model.save(tmp_path / "native")
    assert _types(tmp_path / "native") == list(st_format.MODULES.values())
    assert not (tmp_path / "native" / st_format.MODULE_CONFIG).exists()
    st = SentenceTransformer(str(tmp_path / "native"), device="cpu")  # no trust_remote_code needed
    _same(st.encode(TEXTS), model.encode(TEXTS))
    _same(st.encode_query(TEXTS), model.encode_queries(TEXTS))


def test_sentence_transformers_save_writes_a_folder_both_load(saved, tmp_path):
    folder = saved / "chat-suffix-system"
    _st(folder).save(str(tmp_path / "again"))
    reference = mmembed.load(str(folder)).encode(TEXTS)
    _same(_st(tmp_path / "again").encode(TEXTS), reference)
    assert np.array_equal(mmembed.load(str(tmp_path / "again")).encode(TEXTS), reference)
    config = json.loads((tmp_path / "again" / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == PROMPTS and "mmembed" in config["requirements"]


def test_mtebs_sentence_transformers_wrapper_gives_the_same_vectors(saved):
    mteb = pytest.importorskip("mteb")
    from mteb._create_dataloaders import _create_dataloader_from_texts
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.types import PromptType

    folder = saved / "chat-suffix-system"
    ours = mmembed.load(str(folder))
    wrapper = SentenceTransformerEncoderWrapper(str(folder), device="cpu", trust_remote_code=True)
    meta = mteb.get_task("STSBenchmark").metadata
    for prompt_type, reference in ((None, ours.encode(TEXTS)), (PromptType.query, ours.encode_queries(TEXTS))):
        vectors = wrapper.encode(_create_dataloader_from_texts(TEXTS, batch_size=2), task_metadata=meta,
                                 hf_split="test", hf_subset="default", prompt_type=prompt_type)
        _same(np.asarray(vectors), reference)


# ------------------------------------------------------------------------------------------------ refusals
def test_without_trust_remote_code_sentence_transformers_says_what_to_pass(saved):
    from mmembed.integrations.sentence_transformers import MMEmbedModule

    assert st_format.MODULE_TYPE == f"{MMEmbedModule.__module__}.{MMEmbedModule.__name__}"
    with pytest.raises(ValueError, match=r"references the module class 'mmembed\.integrations\.sentence_transformers"
                                         r"\.MMEmbedModule'.*\n.*trust_remote_code=True"):
        SentenceTransformer(str(saved / "suffix"), device="cpu")


def test_a_rationale_mode_folder_is_refused_with_the_reason(qwen2_path, tmp_path):
    mmembed.load(str(qwen2_path), pooling={"mode": "mean", "exclude_prefix": True}, dtype="float32",
                 rationale=RationaleConfig(max_new_tokens=2)).save(tmp_path / "grace")
    with pytest.raises(ModelFolderError, match=r"grace: sentence-transformers cannot load this folder: it embeds in "
                                               r"rationale mode \(GRACE\).*Load it with mmembed\.load\("):
        _st(tmp_path / "grace")


@pytest.mark.parametrize("response, placed", [(None, "0"), (EMB + EMB, "2")], ids=["no-token", "two-tokens"])
def test_a_special_token_folder_without_one_vector_per_input_is_refused(qwen2_emb_path, tmp_path, response, placed):
    mmembed.load(str(qwen2_emb_path), template=PromptTemplate(chat=True, response=response), dtype="float32",
                 pooling={"mode": "special_token", "token": EMB}).save(tmp_path / "multi")
    with pytest.raises(ModelFolderError, match=rf"cannot load this folder: its special-token pooler gives one vector "
                                               rf"per '<\|emb\|>' token, and the template places {placed} per input"):
        _st(tmp_path / "multi")


def test_a_bad_input_is_named_by_itself_not_by_its_place_in_a_sorted_batch(saved):
    with pytest.raises(InputError, match=r"^input '  ' is an empty string"):
        _st(saved / "suffix").encode(["a long sentence that sorts first", "  "])


def test_model_kwargs_dtype_reaches_embedder_load(saved):
    import torch

    st = _st(saved / "suffix", model_kwargs={"torch_dtype": torch.bfloat16})
    assert st[0].embedder.backbone.dtype == torch.bfloat16
    reference = mmembed.load(str(saved / "suffix"), dtype="bfloat16").encode(TEXTS)
    assert np.array_equal(st.encode(TEXTS), reference)


def test_the_model_card_shows_the_loading_that_works(saved, qwen2_path, tmp_path):
    from mmembed.train import card

    lines = "\n".join(card._loading("out/final", saved / "suffix"))
    assert 'SentenceTransformer("out/final", trust_remote_code=True)' in lines
    mmembed.load(str(qwen2_path), rationale=RationaleConfig(max_new_tokens=2), dtype="float32").save(tmp_path / "g")
    assert "sentence-transformers cannot load this folder (it embeds in rationale mode (GRACE)" in "\n".join(
        card._loading("out/final", tmp_path / "g"))


def test_mmembed_refuses_an_st_folder_of_its_module_without_its_config(saved, tmp_path):
    import shutil

    shutil.copytree(saved / "suffix", tmp_path / "copy")
    (tmp_path / "copy" / "mmembed_config.json").unlink()
    with pytest.raises(ModelFolderError, match=r"mmembed_config\.json is missing, and .*modules\.json names mmembed's "
                                               r"own module"):
        mmembed.load(str(tmp_path / "copy"))
