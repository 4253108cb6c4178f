"""`pictag bench-engines`: speed and agreement of every installed engine and precision, on your model and images."""

from __future__ import annotations

from pictag.cli.common import add_command

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
        "pictag.models.engines.bench:run",
        help="time every installed engine and precision on your model and images, with agreement",
        description="Time torch, ONNX Runtime and OpenVINO at fp32, bf16 and int8 on IMAGES, taking turns in one "
        "process, and print img/s, the ratio to torch eager fp32, top-1 agreement and min cosine with torch fp32, "
        "and each engine's export and cache-hit time. Run it before choosing --engine and --precision.",
        examples=EXAMPLES,
    )
