"""The image preprocessing that belongs to a model's weights, split where it is cheapest to move data.

Workers turn a decoded image into small uint8 crops; the main process stacks crops and normalises the whole batch
at once (`normalize`). uint8 crops cross the process boundary at a quarter of the size of float tensors. Three
kinds of crop share that normalise, so no task builds transforms of its own:

- eval (`Preprocess.crop`): each backend's reference transform reproduced step for step, so results equal it to
  float rounding: open_clip and timm resize PIL images (torchvision's PIL path, rounded crop offsets),
  transformers resizes uint8 tensors with torchvision and floors crop offsets;
- train (`Preprocess.train_transform`): random resized crops and the usual augmentations;
- test-time augmentation (`Preprocess.tta_views`): several views of one image.

All of them are frozen dataclasses, so they pickle into DataLoader worker processes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from PIL import Image

from pictag.errors import PictagError

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

    def at_size(self, side: int) -> Preprocess:
        """The same preprocessing for square `side` × `side` inputs, resizing in the same proportion to the crop
        (a CNN takes any size; a smaller one trains several times faster on a CPU)."""
        if isinstance(self.resize, int):
            resize: int | tuple[int, int] = round(side * self.resize / max(self.size))
        else:
            resize = (round(side * self.resize[0] / self.size[0]), round(side * self.resize[1] / self.size[1]))
        return replace(self, size=(side, side), resize=resize)

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

    def train_transform(
        self,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        auto_augment: str | None = None,
    ) -> TrainTransform:
        """Random training crops of this model's size, with options named and defaulted as timm's `create_transform`.

        Args:
            scale: Range of the crop's area, as a fraction of the image's.
            ratio: Range of the crop's aspect ratio (width / height) before it is resized to `size`.
            hflip: Probability of a horizontal flip.
            color_jitter: Brightness, contrast and saturation jitter strength; 0 turns it off.
            auto_augment: "rand" (RandAugment) or "trivial" (TrivialAugmentWide), applied before the jitter.
        """
        return TrainTransform(self.size, self.interpolation, scale, ratio, hflip, color_jitter, auto_augment)

    def tta_views(self, *, scales: Sequence[float] = (1.0,), flip: bool = True) -> TTAViews:
        """Test-time views: the eval crop after resizing to each scale of `resize`, each followed by its mirror.

        Args:
            scales: Multipliers of the eval resize; 1.0 is the eval crop itself, larger ones zoom in.
            flip: Add the horizontal mirror of each view.
        """
        return TTAViews(self, tuple(scales), flip)

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


_AUTO_AUGMENT = ("rand", "trivial")


@dataclass(frozen=True)
class TrainTransform:
    """A decoded RGB image to a random (height, width, 3) uint8 crop; see `Preprocess.train_transform`.

    Random draws come from torch's generator, so `torch.manual_seed` makes them reproducible; DataLoader seeds each
    worker's generator from the main process's.
    """

    size: tuple[int, int]
    interpolation: str
    scale: tuple[float, float]
    ratio: tuple[float, float]
    hflip: float
    color_jitter: float
    auto_augment: str | None

    def __post_init__(self):
        if self.auto_augment not in (None, *_AUTO_AUGMENT):
            raise PictagError(f"auto_augment {self.auto_augment!r} is unknown: use one of {', '.join(_AUTO_AUGMENT)}")

    @property
    def min_decode_size(self) -> tuple[int, int]:
        """(width, height) a decoded image must keep so that even the smallest crop is not upscaled."""
        # A crop holds at least `scale[0]` of the image's area, so at least sqrt(scale[0]) of each side.
        grow = 1 / math.sqrt(self.scale[0])
        return (math.ceil(self.size[1] * grow), math.ceil(self.size[0] * grow))

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self._pipeline(img).permute(1, 2, 0).contiguous().numpy()

    @cached_property
    def _pipeline(self):
        from torchvision.transforms import InterpolationMode, v2

        steps = [
            v2.RandomResizedCrop(self.size, self.scale, self.ratio, interpolation=InterpolationMode(self.interpolation))
        ]
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip(self.hflip))
        # Bilinear for the policies' rotations and shears: PIL's affine transforms refuse lanczos.
        if self.auto_augment == "rand":
            steps.append(v2.RandAugment(interpolation=InterpolationMode.BILINEAR))
        elif self.auto_augment == "trivial":
            steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
        if self.color_jitter:
            steps.append(v2.ColorJitter(self.color_jitter, self.color_jitter, self.color_jitter))
        return v2.Compose([*steps, v2.PILToTensor()])


@dataclass(frozen=True)
class TTAViews:
    """A decoded RGB image to a list of (height, width, 3) uint8 views; see `Preprocess.tta_views`."""

    preprocess: Preprocess
    scales: tuple[float, ...]
    flip: bool

    @property
    def min_decode_size(self) -> tuple[int, int]:
        """(width, height) a decoded image must keep so that the largest view sees no loss of detail."""
        sizes = [p.min_decode_size for p in self._scaled]
        return (max(w for w, _ in sizes), max(h for _, h in sizes))

    def __call__(self, img: Image.Image) -> list[np.ndarray]:
        views = []
        for preprocess in self._scaled:
            crop = preprocess.crop(img)
            views.append(crop)
            if self.flip:
                views.append(np.ascontiguousarray(crop[:, ::-1]))
        return views

    @cached_property
    def _scaled(self) -> list[Preprocess]:
        resize = self.preprocess.resize
        return [
            replace(
                self.preprocess,
                resize=round(resize * s) if isinstance(resize, int) else (round(resize[0] * s), round(resize[1] * s)),
            )
            for s in self.scales
        ]
