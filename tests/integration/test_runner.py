from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import jpeg_bytes, write_tar
from pictag.data import open_source
from pictag.models import create_model
from pictag.pipeline.runner import iter_embeddings


@pytest.mark.parametrize("workers", [0, 2])
def test_every_record_once_across_workers_with_errors_travelling_along(tmp_path, tiny_open_clip, workers):
    spec, checkpoint = tiny_open_clip
    members = {f"{i:04d}.jpg": jpeg_bytes(Image.new("RGB", (32, 24), (i, i, i))) for i in range(1100)}
    members["broken.jpg"] = b"\xff\xd8 nope"
    source = open_source(write_tar(tmp_path / "t.tar", members))
    assert len(source.shards()) > 1
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    keys, errors = [], []
    skip = {"0000.jpg", "0001.jpg"}
    for batch in iter_embeddings(source, encoder, batch_size=50, workers=workers, skip=skip):
        assert batch.features.shape == (len(batch.keys), encoder.embed_dim)
        assert torch.allclose(batch.features.norm(dim=-1), torch.ones(len(batch.keys)), atol=1e-5)
        keys += batch.keys
        errors += batch.errors
    assert sorted(keys) == sorted(set(members) - skip - {"broken.jpg"})
    assert [key for key, _ in errors] == ["broken.jpg"]
