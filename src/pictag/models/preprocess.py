"""The image preprocessing that belongs to a model's weights, split where it is cheapest to move data.

Workers turn a decoded image into a small uint8 crop (`crop`); the main process stacks crops and normalises the
whole batch at once (`normalize`). uint8 crops cross the process boundary at a quarter of the size of float tensors.
Each backend's reference transform is reproduced step for step, so results equal it to float rounding:
open_clip and timm resize PIL images (torchvision's PIL path, rounded crop offsets), transformers resizes uint8
tensors with torchvision and floors crop offsets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

_PIL_FILTERS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """How one model wants its pixels.

    Attributes:
        size: Output (height, width).
        resize: Shortest-edge length to resize to, or an exact (height, width) that ignores the aspect ratio.
        interpolation: "bicubic", "bilinear", "nearest" or "lanczos".
        mean: Per-channel mean, on the 0..1 scale.
        std: Per-channel standard deviation, on the 0..1 scale.
        backend: "pil" resizes PIL images (open_clip, timm); "tensor" resizes uint8 tensors (transformers).
    """

    size: tuple[int, int]
    resize: int | tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    backend: Literal["pil", "tensor"] = "pil"

    @property
    def min_decode_size(self) -> tuple[int, int]:
        """(width, height) a decoded image must keep so that the resize sees no loss of detail."""
        if isinstance(self.resize, int):
            return (self.resize, self.resize)
        return (self.resize[1], self.resize[0])

    @property
    def fingerprint(self) -> str:
        """A short hash that changes whenever any preprocessing parameter does."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def crop(self, img: Image.Image) -> np.ndarray:
        """Resize and centre-crop an RGB image into a (height, width, 3) uint8 array."""
        return self._crop_pil(img) if self.backend == "pil" else self._crop_tensor(img)

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """Turn a (N, H, W, 3) uint8 batch into the (N, 3, H, W) float batch the model expects."""
        # (x / 255 - mean) / std as one multiply and one subtract over the batch.
        x = crops.permute(0, 3, 1, 2).float()
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        return x.mul_(1 / (255 * std)).sub_(mean / std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Preprocess one RGB image into a (3, H, W) float tensor."""
        return self.normalize(torch.from_numpy(self.crop(img)).unsqueeze(0))[0]

    def _crop_pil(self, img: Image.Image) -> np.ndarray:
        width, height = img.size
        if isinstance(self.resize, int):
            # torchvision's rule: the short side becomes `resize`, the long side is truncated.
            if width <= height:
                new_w, new_h = self.resize, int(self.resize * height / width)
            else:
                new_w, new_h = int(self.resize * width / height), self.resize
        else:
            new_h, new_w = self.resize
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), _PIL_FILTERS[self.interpolation])
        out_h, out_w = self.size
        if new_w < out_w or new_h < out_h:
            img = _pad_center(img, out_w, out_h)
            new_w, new_h = img.size
        top = int(round((new_h - out_h) / 2.0))
        left = int(round((new_w - out_w) / 2.0))
        return np.array(img.crop((left, top, left + out_w, top + out_h)))

    def _crop_tensor(self, img: Image.Image) -> np.ndarray:
        import torchvision.transforms.v2.functional as tvf
        from torchvision.transforms import InterpolationMode

        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        height, width = x.shape[-2:]
        if isinstance(self.resize, int):
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.resize, int(self.resize * long / short)
            new_h, new_w = (new_long, new_short) if width <= height else (new_short, new_long)
        else:
            new_h, new_w = self.resize
        if (new_h, new_w) != (height, width):
            x = tvf.resize(x, [new_h, new_w], interpolation=InterpolationMode(self.interpolation), antialias=True)
        out_h, out_w = self.size
        if new_h < out_h or new_w < out_w:
            pad = [max(out_w - new_w, 0) // 2, max(out_h - new_h, 0) // 2]
            x = tvf.pad(x, [pad[0], pad[1], max(out_w - new_w, 0) - pad[0], max(out_h - new_h, 0) - pad[1]])
            new_h, new_w = x.shape[-2:]
        top, left = int((new_h - out_h) / 2.0), int((new_w - out_w) / 2.0)
        return x[:, top : top + out_h, left : left + out_w].permute(1, 2, 0).contiguous().numpy()


def _pad_center(img: Image.Image, out_w: int, out_h: int) -> Image.Image:
    width, height = img.size
    canvas = Image.new("RGB", (max(width, out_w), max(height, out_h)))
    # torchvision pads left/top with the floor of half the difference.
    canvas.paste(img, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas
