"""Random CLIP models built from config, saved where pictag and the reference libraries can load them, and small
synthetic image sets.

For tests and benchmarks on machines that cannot download weights: the architecture (and so the speed) is real,
the weights are not. The tokenizer is CLIP's real BPE vocabulary, taken from open_clip's bundled copy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def save_random_hf_clip(
    folder: str | Path,
    *,
    width: int = 32,
    layers: int = 1,
    heads: int = 2,
    vision_width: int | None = None,
    vision_layers: int | None = None,
    patch_size: int = 32,
    image_size: int = 224,
    projection_dim: int = 16,
    logit_scale: float = 50.0,
    seed: int = 0,
) -> Path:
    """Save a random transformers CLIPModel, tokenizer and image processor to `folder` (for `hf:<folder>`)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from pictag.models.export import save_clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_clip_tokenizer(folder)
    vision_width = vision_width or width

    def tower(hidden: int, depth: int) -> dict:
        return dict(
            hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=depth, num_attention_heads=heads
        )

    config = CLIPConfig(
        text_config=dict(tower(width, layers), vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(tower(vision_width, vision_layers or layers), image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size).save_pretrained(folder)
    return folder


def save_random_open_clip(
    folder: str | Path, name: str, config: dict, *, logit_scale: float = 50.0, seed: int = 0
) -> Path:
    """Register an open_clip architecture `name` from `config` and save random weights; returns the checkpoint."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    checkpoint = folder / f"{name}.pt"
    torch.save(model.state_dict(), checkpoint)
    return checkpoint


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128)}


def save_colour_objects(root: str | Path, objects: int = 4, views: int = 3, seed: int = 0) -> Path:
    """A folder of classes `root/<colour>/<colour><obj>_<view>.png`: each image filled with its class's colour, with a
    small grey square (the object's size, placed anew in each view) and noise, so that even a random network tells
    the classes apart (for retrieval and kNN tests)."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for obj in range(objects):
            for view in range(views):
                pixels = np.empty((64, 64, 3), dtype=np.int16)
                pixels[:] = colour
                side = 8 + 4 * obj
                x, y = rng.integers(0, 64 - side, 2)
                pixels[y : y + side, x : x + side] = 160
                pixels += rng.integers(-20, 21, pixels.shape)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{name}{obj}_{view}.png")
    return root
