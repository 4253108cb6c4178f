"""Which parameters "the last N blocks" of an image encoder are, for each family of architectures.

A layout names the container of the image tower's blocks (nested Sequentials, such as EfficientNet's stages, are
flattened into their blocks) and the modules after the blocks (final norm, head conv, projection), which are
trained whenever any block is. The first layout whose block path exists in the model is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pictag.errors import PictagError


@dataclass(frozen=True)
class BlockLayout:
    blocks: tuple[str, ...]
    tail: tuple[str, ...]


LAYOUTS = (
    # open_clip ViTs
    BlockLayout(("visual.transformer.resblocks",), ("visual.ln_post", "visual.proj")),
    # transformers CLIP / SigLIP
    BlockLayout(("vision_model.encoder.layers",), ("vision_model.post_layernorm", "visual_projection")),
    # timm ViTs, EfficientNets, MobileNets
    BlockLayout(("blocks",), ("norm", "fc_norm", "conv_head", "bn2")),
    # timm ConvNeXts and other staged nets
    BlockLayout(("stages",), ("norm_pre", "final_conv", "head.norm")),
    # ResNets
    BlockLayout(("layer1", "layer2", "layer3", "layer4"), ()),
)


def _get(module: torch.nn.Module, path: str) -> torch.nn.Module | torch.nn.Parameter | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _flatten(container: torch.nn.Module) -> list[torch.nn.Module]:
    children = list(container.children())
    if children and all(isinstance(c, torch.nn.Sequential) for c in children):
        return [block for child in children for block in _flatten(child)]
    return children


def image_blocks(module: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Parameter]]:
    """(blocks in forward order, parameters of the modules after them) of a model's image tower.

    Raises:
        PictagError: no known layout fits the model.
    """
    for layout in LAYOUTS:
        containers = [_get(module, path) for path in layout.blocks]
        if all(isinstance(c, torch.nn.Module) for c in containers):
            blocks = [block for container in containers for block in _flatten(container)]
            tail = []
            for path in layout.tail:
                part = _get(module, path)
                if isinstance(part, torch.nn.Parameter):
                    tail.append(part)
                elif isinstance(part, torch.nn.Module):
                    tail += list(part.parameters())
            return blocks, tail
    known = ", ".join("+".join(layout.blocks) for layout in LAYOUTS)
    raise PictagError(f"cannot find the blocks of {type(module).__name__} (known layouts: {known}): use another model")


def unfreeze_last_blocks(module: torch.nn.Module, count: int) -> list[torch.nn.Parameter]:
    """Freeze every parameter, then unfreeze the last `count` image blocks and what follows them.

    Returns:
        The parameters left trainable (empty when `count` is 0: only the head is trained).

    Raises:
        PictagError: a negative count, or more blocks than the model has.
    """
    blocks, tail = image_blocks(module)
    if not 0 <= count <= len(blocks):
        raise PictagError(
            f"--unfreeze-blocks {count}: {type(module).__name__} has {len(blocks)} blocks (0..{len(blocks)})"
        )
    for p in module.parameters():
        p.requires_grad_(False)
    trainable = [p for block in blocks[len(blocks) - count :] for p in block.parameters()] + (tail if count else [])
    for p in trainable:
        p.requires_grad_(True)
    return trainable
