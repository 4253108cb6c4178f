"""An `Encoder` whose towers run in a compiled engine, with the torch encoder's contract unchanged.

`EngineEncoder` keeps the torch encoder's spec, weights id, preprocessing, logit scale and module (its parameters
say where the model is; the text prototype cache and the resume guard key on the weights id), and replaces only
`forward_image` and `forward_text`. The runner, heads, errors and resume therefore work as they do with torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from pictag.device import choose_precision
from pictag.errors import PictagError
from pictag.models.base import Encoder
from pictag.models.engines.cache import Cached, cached
from pictag.models.engines.runtimes import OPSET, RUNTIMES, Run, Runtime
from pictag.models.engines.towers import TextTower, Tower, image_tower, text_tower

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnx", "openvino", "auto")
_PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Compiled:
    """How an encoder's towers were compiled: for reports and benchmarks.

    Attributes:
        engine: "onnx" or "openvino".
        precision: Inference precision: "fp32", "bf16" or "int8" (int8 image tower; the text tower stays float).
        export_s: Seconds each tower's export took (when it was built), by tower name.
        load_s: Seconds each tower took to load from the cache, by tower name.
        hits: Whether each tower was already in the cache.
        folders: Each tower's cache entry.
    """

    engine: str
    precision: str
    export_s: dict[str, float] = field(default_factory=dict)
    load_s: dict[str, float] = field(default_factory=dict)
    hits: dict[str, bool] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)


class EngineEncoder(Encoder):
    """A torch `Encoder` with its towers running in ONNX Runtime or OpenVINO; see `compile_encoder`.

    Attributes:
        compiled: Engine, precision, and the export and cache-load times of each tower.
    """

    def __init__(
        self,
        source: Encoder,
        compiled: Compiled,
        image: Run,
        text: TextTower | None,
        load_text: Callable[[Tower], Run] | None,
        text_precision: str = "fp32",
    ):
        super().__init__(
            source.spec,
            source.module,
            source.preprocess,
            source.embed_dim,
            source.weights_id,
            source.logit_scale,
            source.logit_bias,
        )
        self.has_text = text is not None
        self.compiled = compiled
        # What computes the text prototypes (the zero-shot head's cache key): int8 leaves the text tower float.
        self.text_setup = f"{compiled.engine}:{text_precision}"
        self._image, self._text, self._load_text = image, text, load_text
        self._text_runs: dict[int | None, Run] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.spec!r}, dim={self.embed_dim}, engine={self.compiled.engine}, "
            f"precision={self.compiled.precision})"
        )

    def forward_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._image({"pixels": pixels.detach().float().cpu().numpy()}))

    def forward_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self._text is None:
            return super().forward_text(texts)
        inputs = self._text.prepare(texts)
        variant = self._text.variant(inputs)
        if variant not in self._text_runs:  # a graph per token length, exported when first needed
            self._text_runs[variant] = self._load_text(self._text.build(variant))
        return torch.from_numpy(self._text_runs[variant](inputs))


def runtime(engine: str) -> Runtime:
    """The installed runtime of an engine name.

    Raises:
        PictagError: an unknown engine, or one whose extra is not installed (one line naming it).
    """
    if engine not in RUNTIMES:
        raise PictagError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    found = RUNTIMES[engine]
    found.require()
    return found


def precision_of(encoder: Encoder) -> str:
    """The precision an engine should run an encoder in: the one `--precision` resolved to for its torch path."""
    return _PRECISIONS[encoder.autocast_dtype]


def engine_precision(encoder: Encoder, engine: str, requested: str | None) -> tuple[str, str | None]:
    """(precision, note) an engine runs `encoder` in: its torch precision, or fp32 where `--precision` was left to
    auto (or unset) and the engine has no kernels for what auto chose (`pictag.device.choose_precision`); the note
    says so. An explicit precision the engine cannot run is kept, for `compile_encoder` to refuse with the way out."""
    precision = precision_of(encoder)
    if engine not in RUNTIMES or requested not in (None, "auto"):
        return precision, None
    runs = RUNTIMES[engine].precisions
    chosen, why = choose_precision(None, "auto", engine=engine, engine_precisions=runs, chosen=precision)
    return chosen, why if chosen != precision else None


def compile_encoder(
    encoder: Encoder,
    engine: str,
    *,
    quantize: str | None = None,
    calibration=None,
    threads: int | None = None,
    precision: str | None = None,
) -> Encoder:
    """The encoder with its towers exported to `engine` (from the cache when done before) and compiled.

    fp32 equals torch to about 1e-6; bf16 (OpenVINO) is the precision `encoder.autocast_dtype` names; int8
    quantizes the image tower, statically, on `calibration`.

    Args:
        encoder: A torch encoder on the CPU; its `autocast_dtype` is the precision to run.
        engine: "torch" (the encoder itself), "onnx" or "openvino".
        quantize: "int8", or None for float.
        calibration: Images calibrating int8 (a few hundred of the user's own): (3, H, W) float32 preprocessed
            images, or a `Calibration` of encoded ones, decoded only when the quantization is not cached yet.
        threads: Threads of the engine; torch's when None.
        precision: "fp32" or "bf16" instead of the encoder's own (see `engine_precision`).

    Raises:
        PictagError: an engine not installed, a precision or device it does not run, or int8 without calibration.
    """
    if engine == "torch":
        if quantize:
            raise PictagError("--quantize int8 needs --engine onnx or openvino: torch's eager path has no int8 here")
        return encoder
    found = runtime(engine)
    if encoder.device.type != "cpu":
        raise PictagError(f"--engine {engine} runs on the CPU, not {encoder.device}: use --engine torch on GPUs")
    precision = precision or precision_of(encoder)
    found.check_precision(precision)
    if quantize not in (None, "int8"):
        raise PictagError(f"--quantize {quantize!r} is unknown: use int8")
    threads = threads or torch.get_num_threads()
    compiled = Compiled(engine, "int8" if quantize else precision)

    def load(name: str, entry: Cached) -> Run:
        compiled.export_s[name], compiled.load_s[name], compiled.hits[name] = entry.build_s, entry.load_s, entry.hit
        compiled.folders[name] = entry.folder.name
        return entry.value

    image = image_tower(encoder)
    fp32 = _export(found, encoder, image, precision, threads)
    if quantize:
        if not calibration:
            raise PictagError("--quantize int8 needs calibration images: pass --calibration-images N (e.g. 300)")
        image_run = load("image", _quantized(found, encoder, image, fp32.folder, calibration, precision, threads))
    else:
        image_run = load("image", fp32)

    def load_text(tower: Tower) -> Run:
        return load(tower.name, _export(found, encoder, tower, precision, threads))

    text = text_tower(encoder)
    return EngineEncoder(encoder, compiled, image_run, text, load_text if text else None, precision)


def _key(runtime: Runtime, encoder: Encoder, tower: Tower, stored: str) -> dict:
    """What an exported tower depends on: weights, engine, precision of the file, input shape, opset, versions."""
    return {
        "spec": encoder.spec,
        "weights_id": encoder.weights_id,
        "tower": tower.name,
        "engine": runtime.name,
        "precision": stored,
        "inputs": {
            name: [None if axis in tower.dynamic.get(name, {}) else size for axis, size in enumerate(t.shape)]
            for name, t in tower.example.items()
        },
        "opset": OPSET,
        "versions": {**runtime.versions(), **library_versions()},
    }


def library_versions() -> dict[str, str]:
    # The exported graph is traced through these libraries' code: a new version may trace another graph.
    found = {}
    for name in ("torch", "open_clip_torch", "transformers", "timm"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _export(runtime: Runtime, encoder: Encoder, tower: Tower, precision: str, threads: int) -> Cached[Run]:
    # One fp32 file serves fp32 and bf16: the precision is the engine's compile-time choice, not the file's.
    def build(folder) -> None:
        onnx = RUNTIMES["onnx"]
        if runtime.name == "openvino" and onnx.installed():
            # OpenVINO converts the (cached) ONNX export: the two engines share one trace of the model.
            exported = cached(onnx.name, _key(onnx, encoder, tower, "fp32"), partial(onnx.export, tower), Path)
            runtime.export(tower, folder, onnx=exported.folder / onnx.file)
        else:
            runtime.export(tower, folder)

    return cached(
        runtime.name,
        _key(runtime, encoder, tower, "fp32"),
        build,
        lambda folder: runtime.load(folder, precision, threads),
    )


def _quantized(
    runtime: Runtime,
    encoder: Encoder,
    tower: Tower,
    fp32_folder,
    calibration: Sequence[np.ndarray],
    precision: str,
    threads: int,
) -> Cached[Run]:
    import hashlib

    if hasattr(calibration, "digest"):  # a `Calibration`: images named by their bytes, decoded only for a build
        identity = calibration.digest
    else:
        digest = hashlib.sha256()
        for pixels in calibration:
            digest.update(np.ascontiguousarray(pixels, np.float32).tobytes())
        identity = digest.hexdigest()[:20]
    key = {**_key(runtime, encoder, tower, "int8"), "calibration": identity, "images": len(calibration)}

    def build(folder) -> None:
        log.warning(
            "quantizing %s to int8 with %s on %d images (once: the result is cached)",
            encoder.spec,
            runtime.name,
            len(calibration),
        )
        pixels = calibration.pixels() if hasattr(calibration, "pixels") else calibration
        inputs = [{"pixels": np.asarray(p, np.float32)[None]} for p in pixels]
        runtime.quantize(fp32_folder, inputs, folder, transformer)

    transformer = any("attention" in type(m).__name__.lower() for m in encoder.module.modules())
    return cached(
        f"{runtime.name}-int8",
        key,
        build,
        lambda folder: runtime.load(folder, precision, threads),
    )
