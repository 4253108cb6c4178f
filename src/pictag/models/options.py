"""The options of the model layer: which model and weights (`ModelOptions`), what runs them (`EngineOptions`), and
the configs of the commands that only handle models: export, models, download, bench-engines.

Plain data: this module imports no model library, so `pictag --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pictag.config import Checked
from pictag.data.options import LabelOptions
from pictag.errors import PictagError
from pictag.models.registry import default_model

Precision = Literal["auto", "fp32", "tf32", "fp16", "bf16"]


@dataclass(kw_only=True)
class ModelOptions:
    """model

    Attributes:
        model: Model spec: open_clip:ARCH/TAG, hf:ORG/NAME or hf:/dir, timm:NAME, or a run directory from
            `pictag train` ($PICTAG_MODEL, else open_clip:ViT-B-32/openai, when unset).
        checkpoint: Local weights file loaded into the --model architecture instead of downloading.
        random_weights: Random weights, for tests and benchmarks.
        device: cpu, cuda, cuda:N or mps (best available when unset).
        precision: Autocast precision. auto (when unset, unless $PICTAG_PRECISION names one): half on GPUs,
            bf16 on CPUs with native bf16 (AVX512-BF16 or AMX-BF16), fp32 on other CPUs. fp32 is exact.
    """

    model: str = field(default_factory=default_model)
    checkpoint: str | None = None
    random_weights: bool = False
    device: str | None = None
    precision: Precision | None = None


@dataclass(kw_only=True)
class EngineOptions(Checked):
    """engine

    Attributes:
        engine: What runs the model's towers: torch (eager), onnx (ONNX Runtime, pictag[onnx]), openvino
            (pictag[openvino]), or auto (the fastest installed here, measured once per model and machine). The
            engines run on the CPU; --precision picks fp32 (exact) or bf16 (openvino).
        quantize: int8: post-training static quantization of the image tower (onnx or openvino), calibrated on
            --calibration-images of the source's own images; its agreement with fp32 is measured and printed.
        calibration_images: Images of the source that calibrate --quantize int8; the next ones (up to 200) are
            held out to measure its agreement with fp32.
        min_agreement: Top-1 agreement with fp32, on the held-out images, below which --quantize int8 warns.
        strict: Refuse an int8 model whose agreement is below --min-agreement, instead of warning.
    """

    _at_least: ClassVar[dict[str, int]] = {"calibration_images": 1}

    engine: Literal["torch", "onnx", "openvino", "auto"] = "torch"
    quantize: Literal["int8"] | None = None
    calibration_images: int = 300
    min_agreement: float = 0.99
    strict: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.min_agreement <= 1:
            raise PictagError(f"--min-agreement is a fraction between 0 and 1, not {self.min_agreement}")


@dataclass(kw_only=True)
class StoreModelOptions:
    """model (default: the store's)

    Attributes:
        model: Override the store's model spec (it must be the same weights).
        checkpoint: Override the store's checkpoint file (it must be the same weights).
        device: cpu, cuda, cuda:N or mps (best available when unset).
    """

    model: str | None = None
    checkpoint: str | None = None
    device: str | None = None


@dataclass(kw_only=True)
class ExportConfig:
    """Everything `pictag export` takes.

    Attributes:
        model: Run directory from `pictag train` (RUN, RUN/best or RUN/wise-ft-A).
        format: hf: a save_pretrained folder (transformers' CLIPModel/CLIPProcessor for a CLIP run, and --model
            hf:DIR; AutoModelForImageClassification and pipeline("image-classification") for a timm classifier);
            open_clip: open_clip_model.safetensors + open_clip_config.json (open_clip "local-dir:DIR");
            onnx, openvino: one graph from uint8 crops to scores and embedding, with pipeline.json.
        out: The folder to write.
        overwrite: Replace an existing output.
    """

    _out: ClassVar[str] = "folder"
    _required: ClassVar[tuple[str, ...]] = ("model", "format", "out")
    _renamed: ClassVar[dict[str, str]] = {"RUN": "model"}  # export took its run positionally

    model: str | None = None
    format: Literal["hf", "open_clip", "onnx", "openvino"] | None = None
    out: str | None = None
    overwrite: bool = False


@dataclass(kw_only=True)
class ModelsConfig:
    """Everything `pictag models` takes.

    Attributes:
        scheme: Only this backend.
        grep: Only specs containing this text (case-insensitive).
        cached: Only models whose weights are in the local Hugging Face cache, with their sizes.
    """

    _positional: ClassVar[tuple[str, ...]] = ("scheme",)

    scheme: Literal["open_clip", "hf", "timm"] | None = None
    grep: str | None = None
    cached: bool = False


@dataclass(kw_only=True)
class DownloadConfig:
    """Everything `pictag download` takes.

    Attributes:
        model: The model spec to fetch: open_clip:ARCH/TAG, hf:ORG/NAME or timm:NAME.
        to: Also write it as a self-contained folder that --model DIR loads with no hub and no cache.
        overwrite: Replace an existing --to folder.
    """

    _required: ClassVar[tuple[str, ...]] = ("model",)
    _renamed: ClassVar[dict[str, str]] = {"SPEC": "model"}  # download took its model positionally

    model: str | None = None
    to: str | None = None
    overwrite: bool = False


@dataclass(kw_only=True)
class BenchEnginesConfig(Checked, ModelOptions, LabelOptions):
    """Everything `pictag bench-engines` takes.

    Attributes:
        images: The images to time on: a folder of your own, or any source.
        limit: Images to use (the first ones of the source).
        batch_size: Images per forward pass.
        rounds: Passes over the images per engine and precision, taking turns; the best pass counts.
        engines: Comma-separated engines to time, e.g. torch,openvino (every installed one when unset).
        precision: Only this precision (fp32, bf16 where the CPU has it, and int8 when unset).
        calibration_images: Images that calibrate int8 (at most half of them); agreement with torch fp32 is measured
            on the others.
        labels: Labels to measure top-1 agreement over (CLIP-family models); nearest neighbours when unset.
    """

    _positional: ClassVar[tuple[str, ...]] = ("images",)
    _required: ClassVar[tuple[str, ...]] = ("images",)
    _at_least: ClassVar[dict[str, int]] = {"limit": 1, "batch_size": 1, "rounds": 1, "calibration_images": 1}

    images: str | None = None
    limit: int = 256
    batch_size: int = 32
    rounds: int = 3
    engines: str | None = None
    precision: Literal["fp32", "bf16", "int8"] | None = None
    calibration_images: int = 128
