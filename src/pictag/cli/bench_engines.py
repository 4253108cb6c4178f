"""`pictag bench-engines`: speed and agreement of every installed engine and precision, on your model and images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.models.options import BenchEnginesConfig

EXAMPLES = """examples:
  pictag bench-engines photos/ --model open_clip:ViT-B-32/openai
  pictag bench-engines photos/ --model timm:tf_efficientnet_lite0 --checkpoint lite0.pth --engines torch,openvino
  pictag bench-engines photos/ --model hf:openai/clip-vit-base-patch32 --labels-file labels.txt --precision int8
then:
  pictag classify photos/ --labels-file labels.txt --engine openvino --precision bf16 --out r.parquet
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "bench-engines",
        "pictag.models.options:BenchEnginesConfig",
        "pictag.cli.bench_engines:run",
        help="time every installed engine and precision on your model and images, with agreement",
        description="Time torch, ONNX Runtime and OpenVINO at fp32, bf16 and int8 on IMAGES, taking turns in one "
        "process, and print img/s, the ratio to torch eager fp32, top-1 agreement and min cosine with torch fp32, "
        "and each engine's export and cache-hit time. Run it before choosing --engine and --precision.",
        examples=EXAMPLES,
    )


def run(cfg: BenchEnginesConfig):
    """Read the images and build the labels head here, so the engine layer never reads a source."""
    from pictag.data.sources import open_source
    from pictag.errors import PictagError
    from pictag.models.build import build_encoder
    from pictag.models.engines.bench import bench_engines, bench_reference
    from pictag.pipeline.runner import labels_head, sample_pixels

    source = open_source(cfg.images)
    reference = bench_reference(
        build_encoder(
            cfg,
        )
    )
    pixels = sample_pixels(source, reference, cfg.limit, cfg.batch_size)
    if not len(pixels):
        raise PictagError(f"{cfg.images}: no decodable image to time on")
    return bench_engines(
        reference,
        pixels,
        labels_head(cfg.labels, cfg.labels_file, cfg.templates, reference),
        engines=cfg.engines,
        precision=cfg.precision,
        calibration_images=cfg.calibration_images,
        batch_size=cfg.batch_size,
        rounds=cfg.rounds,
    )
