"""Texts longer than a text tower's context (a 1,000-character label, a 300-word product title): every tower cuts
them to its own context, as its reference library does when asked to truncate, and says so once; nothing fails."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from conftest import jpeg_bytes, photos
from pictag.cli.main import main
from pictag.models.registry import create_model
from pictag.serve.api import create_app
from pictag.serve.config import ServeConfig

# 1,000 characters (the longest label accepted) and about 200 CLIP tokens; a product title of 300 words.
LONG_LABEL = ("a very long label " * 56)[:1000].strip()
TITLE = " ".join(["soft red cotton shirt with a blue leather bag"] * 34)
WORDS = ["red", "blue", "shirt", "bag", "cotton", "leather", "soft", "new"]


def said_once(caplog, run) -> None:
    """`run()` twice logs the truncation once, naming the context."""
    with caplog.at_level(logging.WARNING, logger="pictag.models.base"):
        run()
        run()
    said = [r.getMessage() for r in caplog.records if "tokens of a text: longer texts are cut there" in r.getMessage()]
    assert len(said) == 1, caplog.text


def test_hf_clip_cuts_to_its_77_positions_as_transformers_does(tiny_hf_clip, caplog):
    from transformers import AutoTokenizer, CLIPModel

    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="fp32")
    texts = [LONG_LABEL, TITLE, "a cat"]
    model, tokenizer = CLIPModel.from_pretrained(tiny_hf_clip).eval(), AutoTokenizer.from_pretrained(tiny_hf_clip)
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert tokens["input_ids"].shape[1] == 77
    with torch.no_grad():
        expected = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    said_once(caplog, lambda: torch.testing.assert_close(encoder.encode_text(texts), expected, atol=1e-5, rtol=0))


def test_open_clip_cuts_to_its_context_as_open_clip_does(tiny_open_clip, caplog):
    import open_clip

    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    texts = [LONG_LABEL, TITLE, "a cat"]
    with torch.no_grad():
        expected = F.normalize(encoder.module.encode_text(open_clip.get_tokenizer("pictag-tiny")(texts)), dim=-1)
    said_once(caplog, lambda: torch.testing.assert_close(encoder.encode_text(texts), expected, atol=1e-5, rtol=0))
    caplog.clear()
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    with caplog.at_level(logging.WARNING, logger="pictag.models.base"):
        encoder.encode_text(["a cat", "a dog"])
    assert "cut there" not in caplog.text  # short texts say nothing


@pytest.fixture(scope="module")
def short_bert(tmp_path_factory):
    """A random BERT text encoder with 16 positions, so that a short title already overflows it."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("short_bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=16).save_pretrained(folder)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("text_tower", ["clip", "bert"])
def test_a_fusion_pair_embeds_300_word_titles(text_tower, tiny_hf_clip, short_bert, caplog):
    text = tiny_hf_clip if text_tower == "clip" else short_bert
    pair = create_model(f"pair:timm:test_efficientnet_gn+hf:{text}", random_weights=True, device="cpu",
                        precision="fp32")  # fmt: skip
    said_once(caplog, lambda: pair.encode_text([TITLE, "red bag"]))
    # Training runs forward_text with gradients: the cut titles train as any other.
    pair.train()
    pair.forward_text([TITLE, "new shirt"]).sum().backward()


def test_classify_with_a_1000_character_label(tiny_hf_clip, photo_dir, tmp_path, capsys):
    out = tmp_path / "out.csv"
    args = ["classify", str(photo_dir), "--model", f"hf:{tiny_hf_clip}", "--device", "cpu", "--workers", "0",
            "--labels", f"{LONG_LABEL},cat", "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert LONG_LABEL in out.read_text()


def test_the_api_answers_a_1000_character_label(tiny_hf_clip):
    cfg = ServeConfig(model=f"hf:{tiny_hf_clip}", device="cpu", max_wait_ms=1, request_timeout_s=20)
    with TestClient(create_app(cfg)) as client:
        r = client.post("/v1/classify", files={"image": ("c.jpg", jpeg_bytes(photos()["chelsea"]))},
                        data={"labels": f"{LONG_LABEL},cat", "top_k": "2"})  # fmt: skip
    assert r.status_code == 200, r.text[:300]
    assert {x["label"] for x in r.json()["labels"]} == {LONG_LABEL, "cat"}


def test_fusion_trains_and_classifies_300_word_titles(tiny_hf_clip, tmp_path, capsys):
    from product_data import write_products

    products = write_products(tmp_path / "products", per_class=3)
    table = products / "products.csv"
    rows = table.read_text().splitlines()
    table.write_text("\n".join(rows[:1] + [row + TITLE for row in rows[1:]]) + "\n")  # the description: 300 words
    images, run, out = str(products / "images"), tmp_path / "run", tmp_path / "pred.csv"
    model = ["--model", f"hf:{tiny_hf_clip}", "--device", "cpu", "--workers", "0"]
    train = ["train", str(table), "--task", "fusion", "--images", images, *model, "--out", str(run), "--epochs", "1",
             "--batch-size", "4"]  # fmt: skip
    assert main(train) == 0, capsys.readouterr().err
    assert main(["classify", str(table), "--images", images, *model[:1], str(run), *model[2:], "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1 + 12


@pytest.mark.parametrize("backend", ["open_clip", "hf"])
def test_an_onnx_text_graph_cuts_as_torch_does(backend, tiny_open_clip, tiny_hf_clip, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="--engine onnx needs pip install 'pictag[onnx]', which is not installed")
    from pictag.models.engines import compile_encoder

    monkeypatch.setenv("PICTAG_CACHE", str(tmp_path))
    spec, checkpoint = tiny_open_clip if backend == "open_clip" else (f"hf:{tiny_hf_clip}", None)
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    texts = [LONG_LABEL, TITLE, "a cat"]
    torch.testing.assert_close(compile_encoder(encoder, "onnx").encode_text(texts), encoder.encode_text(texts),
                               atol=1e-5, rtol=0)  # fmt: skip
