"""The one function that builds a job's encoder: the model a spec names, on the engine the job asks for.

A job hands it everything an engine needs: int8 calibrates on the images the job read from its own source, and its
agreement with fp32 is measured over the head the job classifies with. Nothing here reads a source or builds a head.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pictag.models.registry import create_model

if TYPE_CHECKING:
    from pictag.heads.base import Head
    from pictag.models.base import Encoder
    from pictag.models.options import ModelOptions


def build_encoder(
    spec: str | ModelOptions | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    random_weights: bool = False,
    device: str | None = None,
    precision: str | None = None,
    engine: str = "torch",
    quantize: str | None = None,
    calibration: Sequence[tuple[str, bytes]] = (),
    calibration_images: int = 300,
    head: Callable[[Encoder], Head | None] | None = None,
    min_agreement: float = 0.99,
    strict: bool = False,
    batch_size: int = 32,
) -> Encoder:
    """The encoder `spec` names (see `create_model`), its towers on `engine`.

    Args:
        spec, checkpoint, random_weights, device, precision: As `create_model` takes them; or, as `spec`, a
            command's config with its model options (`--model`, `--checkpoint`, `--random-weights`, `--device`,
            `--precision`), which then give all five.
        engine: "torch" (the model as built), "onnx", "openvino", or "auto" (the fastest installed here, measured once
            per model and machine); see `pictag.models.engines`.
        quantize: "int8" quantizes the image tower (onnx or openvino), or None.
        calibration: (key, encoded bytes) of the job's own images for int8: the first `calibration_images`
            calibrate, the ones after them (up to `pictag.models.engines.agreement.HELD_OUT`) are held out to
            measure the agreement with fp32.
        calibration_images: How many of `calibration` calibrate.
        head: Builds, from the torch encoder, the head whose scores int8's agreement is measured over (the job's
            zero-shot head), or gives None; without it, agreement is over nearest neighbours.
        min_agreement: int8's top-1 agreement below which it warns.
        strict: Refuse, rather than warn, below `min_agreement`.
        batch_size: The job's batch size, which `engine="auto"` times at.

    Raises:
        PictagError: what `create_model` refuses; an engine that is missing or cannot run this precision; int8
            without calibration images; or, with `strict`, int8 agreement below `min_agreement`.
    """
    if spec is not None and not isinstance(spec, str):
        options = spec
        spec, checkpoint, random_weights = options.model, options.checkpoint, options.random_weights
        device, precision = options.device, options.precision
    encoder = create_model(
        spec, checkpoint=checkpoint, random_weights=random_weights, device=device, precision=precision
    )
    if engine == "torch" and not quantize:
        return encoder
    from pictag.models.engines.choose import engine_for

    return engine_for(
        encoder,
        engine,
        requested=precision,
        quantize=quantize,
        calibration=calibration,
        calibration_images=calibration_images,
        head=head,
        min_agreement=min_agreement,
        strict=strict,
        batch_size=batch_size,
    )
