"""Reports (JSON round trip, markdown, PNG) and the probes suite through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmembed
from mmembed.cli import main
from mmembed.eval.probes import probe
from mmembed.eval.report import Report, describe_model, sha256


def test_report_files_and_round_trip(tmp_path):
    report = Report(suite="demo", metric="score", tasks={"A": {"score": 81.25, "metric": "m", "n": 3},
                                                         "B": {"score": 12.5, "metric": "m", "n": 4}},
                    summary={"avg": 46.875}, missing={"C": "file not found"}, flags=["B: collapsed"],
                    data={"files": {"x": "0" * 64}}, seeds={"s": 1})
    paths = report.save(tmp_path)
    assert Report.load(paths["json"]) == report
    markdown = paths["markdown"].read_text()
    assert "| A | 3 | 81.25 |" in markdown and "| C |  | missing: file not found |" in markdown
    assert "> **Warning:** B: collapsed" in markdown and "| avg | 46.88 |" in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "f.txt").write_bytes(b"abc")
    assert sha256(tmp_path / "f.txt") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_describe_model_records_the_protocol(qwen2_vl_path):
    model = mmembed.load(str(qwen2_vl_path), dtype="float32", prompts={"query": "Q: "})
    info = describe_model(model)
    assert info["name_or_path"] == str(qwen2_vl_path)
    assert info["config"]["prompts"] == {"query": "Q: "}
    assert info["image_processor"]["size"] == {"longest_edge": 112 * 112, "shortest_edge": 56 * 56}
    assert info["image_processor"]["patch_size"] == 14 and info["embedding_dim"] == 64
    assert info["n_parameters"] == sum(p.numel() for p in model.backbone.model.parameters())
    json.dumps(info, default=str)


def test_probes_cli_with_layers(qwen2_path, tmp_path):
    data = tmp_path / "sts-dev.csv"
    rows = [("A man plays a guitar.", "A man is playing a guitar.", 4.8), ("A cat sleeps.", "A dog barks.", 0.5),
            ("The market fell.", "Stocks dropped.", 4.2), ("A child reads.", "Someone cooks.", 0.2)]
    data.write_text("".join(f"g\tf\t2012\t{i}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)))
    out = tmp_path / "out"
    assert main(["eval", "probes", "--model", str(qwen2_path), "--data", str(data), "--layers", "--dtype", "float32",
                 "-o", str(out)]) == 0
    saved = json.loads((out / "probes.json").read_text())
    assert set(saved["tasks"]) == {"embeddings", "layer 1", "layer 2"}
    model = mmembed.load(str(qwen2_path), dtype="float32")
    sentences = list(dict.fromkeys([r[0] for r in rows] + [r[1] for r in rows]))
    vectors = model.encode(sentences)
    pairs = (model.encode([rows[0][0], rows[2][0]]), model.encode([rows[0][1], rows[2][1]]))
    expected = probe(vectors, pairs)
    for name, value in expected.items():
        assert saved["tasks"]["embeddings"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert saved["tasks"]["layer 2"]["isoscore"] == pytest.approx(expected["isoscore"], rel=1e-5, abs=1e-6)
    assert np.isfinite(saved["tasks"]["layer 1"]["uniformity"])


def test_encode_is_deterministic_while_the_model_trains(qwen2_path):
    """The "stochastic embeddings" trap: a model left in train mode (LoRA dropout 0.5 here) must still embed in eval
    mode, so evaluation during or after training is reproducible; the train mode is restored."""
    import torch

    from mmembed import lora

    model = mmembed.load(str(qwen2_path), dtype="float32")
    model.backbone.model = lora.attach(model.backbone.model, lora.lora_config(model.backbone.model, r=4,
                                                                              dropout=0.5))
    with torch.no_grad():  # a non-zero adapter, so its dropout matters
        for name, p in model.backbone.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    texts = ["A man is playing a guitar.", "Two dogs run in the park."]
    model.train()
    first, second = model.encode(texts), model.encode(texts)
    assert model.training and model.backbone.model.training
    model.eval()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, model.encode(texts), atol=1e-6)
    model.train()  # ... whereas the differentiable training forward does use dropout
    batch = model.backbone.tokenize([model.backbone.renderer.render(mmembed.inputs.to_items(texts)[0][0], "")])
    outs = [model(batch)[0] for _ in range(2)]
    assert not torch.allclose(outs[0], outs[1])
