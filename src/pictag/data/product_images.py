"""Product images as model inputs: every view of every product decoded, cropped and embedded once.

Shared by the fusion task's stage-1 embedding cache and by classification of product tables, so that training and
inference see a product's images the same way: a product without an image is one black view (the placeholder), an
unreadable file is replaced by the placeholder and reported, and `pool_views` turns a product's views into one
embedding (the first view, or their mean).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pictag.data.crops import DecodedImages, Decoder
from pictag.data.decode import DEFAULT_MAX_PIXELS
from pictag.data.sources import FileShard


def view_shard(images: Sequence[Sequence[str]]) -> tuple[FileShard, list[tuple[tuple[int, int], ...]]]:
    """One shard of every product's image files (local paths or fsspec URLs, read as any source's), and each
    product's views in it as (shard, position) for `DecodedImages`."""
    paths: list[str] = []
    views = []
    for product in images:
        views.append(tuple((0, len(paths) + i) for i in range(len(product))))
        paths.extend(product)
    return FileShard("product images", ".", tuple(paths)), views


def offsets_of(images: Sequence[Sequence[str]]) -> torch.Tensor:
    """(N + 1,) start of each product's views in the flat list of views (a product without an image has one)."""
    counts = torch.tensor([max(len(paths), 1) for paths in images], dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def _collate(items: list[dict]) -> list[dict]:
    return items


@torch.no_grad()
def embed_views(
    images: Sequence[Sequence[str]],
    encoder,
    *,
    flip: bool = False,
    workers: int = 0,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skipped: list | None = None,
    desc: str = "embedding images",
) -> list[torch.Tensor]:
    """Normalised embeddings (M, D) on the CPU of every view of every product, in the order of `offsets_of`.

    Returns one tensor, or two with `flip` (the views, then their mirror images: the flip TTA). Placeholders and
    unreadable images get the embedding of the black image; unreadable ones are added to `skipped` as (path, why).
    """
    preprocess = encoder.preprocess
    black = torch.zeros(*preprocess.size, 3, dtype=torch.uint8)
    shard, views = view_shard(images)
    # One item per view; a product without an image is one item without a view: the placeholder.
    items: list[tuple] = []
    for refs in views:
        items += [(ref,) for ref in refs] or [()]
    dataset = DecodedImages((shard,), items, Decoder(preprocess, max_pixels=max_pixels))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    outputs: list[list[torch.Tensor]] = [[] for _ in range(2 if flip else 1)]
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", dynamic_ncols=True, disable=None, leave=False) as bar:
        for items in loader:
            for item in items:
                if item["error"] is not None and skipped is not None:
                    skipped.append(item["error"])
            crops = torch.stack([black if item["crop"] is None else item["crop"] for item in items])
            pixels = preprocess.normalize(crops.to(encoder.device))
            outputs[0].append(encoder.encode_image(pixels).cpu())
            if flip:  # crops are (N, H, W, 3): the width is dimension 2
                outputs[1].append(encoder.encode_image(preprocess.normalize(crops.flip(2).to(encoder.device))).cpu())
            bar.update(len(items))
    return [torch.cat(chunks) if chunks else torch.empty(0, encoder.embed_dim) for chunks in outputs]


def pool_views(views: torch.Tensor, offsets: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, D) one embedding per product: its first view ("first"), else the mean of its views' embeddings."""
    if mode == "first":
        return views[offsets[:-1]]
    counts = offsets[1:] - offsets[:-1]
    owner = torch.repeat_interleave(torch.arange(len(counts), device=views.device), counts.to(views.device))
    sums = torch.zeros(len(counts), views.shape[1], dtype=views.dtype, device=views.device).index_add_(0, owner, views)
    return sums / counts.to(views.device, views.dtype)[:, None]


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a module's weights: towers with the same digest embed alike (one embedding pass serves them)."""
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in module.state_dict().values() if p.is_floating_point()])
        squares = torch.stack(
            [p.detach().double().square().sum() for p in module.state_dict().values() if p.is_floating_point()]
        )
    return hashlib.sha1(sums.cpu().numpy().tobytes() + squares.cpu().numpy().tobytes()).hexdigest()[:16]
