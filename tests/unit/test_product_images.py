"""Product images as model inputs: views per product, placeholders, unreadable files, pooling and the flip view."""

from __future__ import annotations

import torch
from PIL import Image

from pictag.data.products import embed_views, offsets_of, pool_views
from pictag.models.registry import create_model


def test_offsets_and_pooling_of_several_views():
    images = [("a.jpg", "a_2.jpg"), (), ("c.jpg",)]
    offsets = offsets_of(images)
    assert offsets.tolist() == [0, 2, 3, 4], "a product without an image has one (placeholder) view"
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [3.0, 1.0]])
    torch.testing.assert_close(pool_views(views, offsets, "first"), torch.tensor([[1.0, 0.0], [2.0, 2.0], [3.0, 1.0]]))
    torch.testing.assert_close(
        pool_views(views, offsets, "mean_pool"), torch.tensor([[0.5, 0.5], [2.0, 2.0], [3.0, 1.0]])
    )


def test_placeholders_unreadable_files_and_the_mirror_view(tmp_path):
    torch.manual_seed(0)
    encoder = create_model("timm:test_efficientnet_gn", random_weights=True, device="cpu", precision="fp32")
    left = Image.new("RGB", (64, 64), (0, 0, 0))
    left.paste((250, 250, 250), (0, 0, 20, 64))
    left.save(tmp_path / "1.png")
    left.transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "2.png")
    (tmp_path / "3.jpg").write_bytes(b"not an image")
    skipped: list = []
    views, flipped = embed_views(
        [(str(tmp_path / "1.png"),), (str(tmp_path / "2.png"),), (), (str(tmp_path / "3.jpg"),)],
        encoder,
        flip=True,
        skipped=skipped,
    )
    assert views.shape == (4, encoder.embed_dim) and [p for p, _ in skipped] == [str(tmp_path / "3.jpg")]
    # The unreadable file gets the black placeholder's embedding, like the product without an image.
    torch.testing.assert_close(views[2], views[3])
    torch.testing.assert_close(flipped[0], views[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flipped[1], views[0], atol=1e-5, rtol=1e-5)


def test_product_images_are_read_through_fsspec_like_any_source(tmp_path):
    import fsspec

    torch.manual_seed(0)
    encoder = create_model("timm:test_efficientnet_gn", random_weights=True, device="cpu", precision="fp32")
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.save(tmp_path / "1.png")
    root = f"pictag-products-{tmp_path.name}"
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/{root}/1.png", (tmp_path / "1.png").read_bytes())
    try:
        skipped: list = []
        (remote,) = embed_views([(f"memory://{root}/1.png",), (f"memory://{root}/gone.png",)], encoder, skipped=skipped)
        (local,) = embed_views([(str(tmp_path / "1.png"),), (str(tmp_path / "gone.png"),)], encoder)
    finally:
        memory.rm(f"/{root}", recursive=True)
    torch.testing.assert_close(remote, local)
    assert [key for key, _ in skipped] == [f"memory://{root}/gone.png"], "a missing object is reported, not raised"
