"""`pictag bench-engines`: every installed engine and precision, timed on the user's model and images.

The images are decoded once, up front, so only the model is timed. The variants take turns, pass after pass, in
one process; each keeps its best pass, so load from elsewhere on the machine hurts them alike. Agreement with the
exact torch fp32 embeddings is measured on the images int8 was not calibrated on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pictag.errors import PictagError
from pictag.models.base import Encoder
from pictag.models.engines.agreement import Agreement, measure_agreement
from pictag.models.engines.choose import split_held_out
from pictag.models.engines.encoder import EngineEncoder, compile_encoder
from pictag.models.engines.runtimes import RUNTIMES

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Variant:
    """One engine at one precision, and what was measured of it.

    Attributes:
        engine: "torch", "onnx" or "openvino".
        precision: "fp32", "bf16" or "int8".
        encoder: The encoder that runs it.
        rate: Best images/s over the passes.
        agreement: Against torch fp32, on the held-out images.
        export_s: Seconds its export (or quantization) took, when it was built; None for torch.
        cached: Whether the export was already in the cache before this run.
        hit_s: Seconds to load it from the cache (a second compile, after the first).
    """

    engine: str
    precision: str
    encoder: Encoder
    rate: float = 0.0
    agreement: Agreement | None = None
    export_s: float | None = None
    cached: bool = False
    hit_s: float | None = None


@dataclass
class BenchResult:
    """The table `pictag bench-engines` prints."""

    variants: list[Variant]
    images: int
    held_out: int
    batch_size: int
    threads: int
    spec: str
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        base = next((v.rate for v in self.variants if (v.engine, v.precision) == ("torch", "fp32")), 0.0)
        over = self.variants[0].agreement.over if self.variants and self.variants[0].agreement else ""
        lines = [
            f"{self.spec}: {self.images} images, batch {self.batch_size}, {self.threads} threads, best of the "
            f"passes, taking turns; agreement with torch fp32 on {self.held_out} held-out images ({over})",
            f"{'engine':<9} {'precision':<9} {'img/s':>8} {'vs torch':>8} {'top-1':>7} {'min cosine':>10} "
            f"{'export':>9} {'cache hit':>9}",
        ]
        for v in self.variants:
            export = "-" if v.export_s is None else f"{v.export_s:.1f} s" + ("*" if v.cached else "")
            hit = "-" if v.hit_s is None else f"{v.hit_s:.2f} s"
            top1 = f"{100 * v.agreement.top1:.1f}%" if v.agreement else "-"
            cosine = f"{v.agreement.min_cosine:.5f}" if v.agreement else "-"
            lines.append(
                f"{v.engine:<9} {v.precision:<9} {v.rate:>8.1f} {v.rate / base if base else 0:>7.2f}x {top1:>7} "
                f"{cosine:>10} {export:>9} {hit:>9}"
            )
        if any(v.cached for v in self.variants):
            lines.append("* built by an earlier run; the time is the one recorded then")
        lines += [f"not measured: {why}" for why in self.skipped]
        return "\n".join(lines)


def bench_reference(encoder: Encoder) -> Encoder:
    """`encoder` made the exact reference every variant is compared with: torch fp32, on the CPU.

    Raises:
        PictagError: an encoder on another device.
    """
    if encoder.device.type != "cpu":
        raise PictagError(f"bench-engines compares CPU engines: use --device cpu, not {encoder.device}")
    encoder.autocast_dtype = torch.float32
    return encoder


def bench_engines(
    reference: Encoder,
    pixels: torch.Tensor,
    head: torch.nn.Module | None = None,
    *,
    engines: str | None = None,
    precision: str | None = None,
    calibration_images: int = 128,
    batch_size: int = 32,
    rounds: int = 3,
) -> BenchResult:
    """Time every installed engine × precision against `reference` (from `bench_reference`) on `pixels`.

    Args:
        reference: The torch fp32 encoder; every variant is built from it.
        pixels: Preprocessed images (N, 3, H, W); int8 is calibrated on up to `calibration_images` of them and
            agreement measured on the rest.
        head: A labels head to measure top-1 agreement over; nearest neighbours when None.
        engines: Comma-separated engines (every installed one when None).
        precision: Only this precision (fp32, bf16 and int8 when None).
        calibration_images: At most this many images calibrate int8 (at most half of them).
        batch_size: Images per forward pass.
        rounds: Passes per variant, taking turns; the best pass counts.

    Raises:
        PictagError: no image, an engine named but not installed, or a precision no engine runs.
    """
    if not len(pixels):
        raise PictagError("no image to time on")
    calibration, held, _ = split_held_out(pixels, min(calibration_images, len(pixels) // 2 or 1))
    variants, skipped = _variants(reference, engines, precision, calibration)
    exact = _embed(reference, held, batch_size)
    for variant in variants:
        variant.agreement = measure_agreement(exact, _embed(variant.encoder, held, batch_size), head)
    for _ in range(rounds):
        for variant in variants:
            started = time.perf_counter()
            _embed(variant.encoder, pixels, batch_size)
            variant.rate = max(variant.rate, len(pixels) / (time.perf_counter() - started))
    return BenchResult(variants, len(pixels), len(held), batch_size, torch.get_num_threads(), reference.spec, skipped)


def _variants(
    reference: Encoder, engines: str | None, precision: str | None, calibration
) -> tuple[list[Variant], list[str]]:
    names = ["torch", *RUNTIMES] if not engines else [e.strip() for e in engines.split(",")]
    precisions = [precision] if precision else ["fp32", "bf16", "int8"]
    variants, skipped = [], []
    for engine in names:
        for precision in precisions:
            try:
                variants.append(_variant(reference, engine, precision, calibration))
            except PictagError as exc:
                if engines and "not installed" in str(exc):
                    raise
                skipped.append(f"{engine} {precision}: {exc}")
    if not variants:
        raise PictagError("no engine runs here: " + "; ".join(skipped))
    return variants, skipped


def _variant(reference: Encoder, engine: str, precision: str, calibration) -> Variant:
    if engine == "torch":
        if precision == "int8":
            raise PictagError("torch's eager path has no int8 here")
        return Variant(engine, precision, _TorchAt(reference, _DTYPES[precision]))
    quantize = "int8" if precision == "int8" else None
    dtype, reference.autocast_dtype = reference.autocast_dtype, _DTYPES.get(precision, torch.float32)
    try:
        first = compile_encoder(reference, engine, quantize=quantize, calibration=calibration)
        again = compile_encoder(reference, engine, quantize=quantize, calibration=calibration)
    finally:
        reference.autocast_dtype = dtype
    assert isinstance(first, EngineEncoder) and isinstance(again, EngineEncoder)
    return Variant(
        engine,
        precision,
        again,
        export_s=first.compiled.export_s["image"],
        cached=first.compiled.hits["image"],
        hit_s=again.compiled.load_s["image"],
    )


class _TorchAt(Encoder):
    """The torch encoder at another autocast precision, sharing its module."""

    def __init__(self, source: Encoder, dtype: torch.dtype):
        super().__init__(source.spec, source.module, source.preprocess, source.embed_dim, source.weights_id)
        self.source_forward = source.forward_image
        self.autocast_dtype = dtype

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.source_forward(pixels)


def _embed(encoder: Encoder, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([encoder.encode_image(batch) for batch in pixels.split(batch_size)])
