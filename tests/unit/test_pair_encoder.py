"""A transformers text-only encoder (mean pooling) and `pair:IMAGE+TEXT` towers: embeddings, and a run directory
that rebuilds both towers without the folders they came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.models.registry import create_model

WORDS = ["red", "blue", "shirt", "bag", "cotton", "leather", "soft", "new"]


def save_tiny_bert(folder: Path) -> Path:
    """A random two-layer BERT with a word-level vocabulary, saved like a sentence-transformers folder's model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


def test_a_text_encoder_embeds_by_mean_pooling_over_the_real_tokens(bert):
    from transformers import AutoModel, AutoTokenizer

    encoder = create_model(f"hf:{bert}", device="cpu", precision="fp32")
    assert encoder.has_text and encoder.embed_dim == 24
    texts = ["red shirt", "soft new leather bag cotton"]
    model, tokenizer = AutoModel.from_pretrained(bert).eval(), AutoTokenizer.from_pretrained(bert)
    expected = []
    for text in texts:  # one at a time: no padding, so the plain mean over tokens is the reference
        hidden = model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]
        expected.append(hidden.mean(dim=0))
    torch.testing.assert_close(
        encoder.encode_text(texts), F.normalize(torch.stack(expected), dim=-1), atol=1e-5, rtol=0
    )
    with pytest.raises(PictagError, match="is a text-only encoder: use it as --text-model"):
        encoder.forward_image(torch.zeros(1, 3, 8, 8))


def test_a_pair_run_directory_rebuilds_both_towers(bert, tmp_path):
    from pictag.heads.fusion import FusionHead
    from pictag.models.run_dir import load_run, save_run_model

    spec = f"pair:timm:test_efficientnet_gn+hf:{bert}"
    torch.manual_seed(0)
    pair = create_model(spec, random_weights=True, device="cpu", precision="fp32")
    assert (pair.embed_dim, pair.text_dim) == (pair.image.embed_dim, 24)
    head = FusionHead(3, pair.embed_dim, pair.text_dim).eval()
    save_run_model(tmp_path / "run" / "best", pair, head, task="fusion", classes=["a", "b", "c"], metrics={})
    moved = tmp_path / "moved-bert"
    shutil.move(bert, moved)  # the run must not need the folder the text tower came from
    try:
        run = load_run(tmp_path / "run", device="cpu", precision="fp32")
    finally:
        shutil.move(moved, bert)
    pixels = torch.randn(2, 3, *pair.preprocess.size)
    texts = ["red bag", "new cotton shirt"]
    torch.testing.assert_close(run.encoder.encode_image(pixels), pair.encode_image(pixels), atol=0, rtol=0)
    torch.testing.assert_close(run.encoder.encode_text(texts), pair.encode_text(texts), atol=0, rtol=0)
    assert run.meta["backbone"] == spec and run.head.config() == head.config()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pair:timm:test_efficientnet_gn", r"must be pair:IMAGE_SPEC\+TEXT_SPEC"),
        ("pair:timm:test_efficientnet_gn+timm:test_efficientnet_gn", "has no text tower: --text-model needs"),
    ],
)
def test_bad_pairs_are_one_line(spec, message):
    with pytest.raises(PictagError, match=message):
        create_model(spec, random_weights=True, device="cpu")
