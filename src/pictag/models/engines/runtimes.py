"""The runtimes a tower can be compiled for: ONNX Runtime and OpenVINO, each an optional extra.

Each runtime exports a `Tower` into a folder (fp32, exactly the torch graph), quantizes one to int8 from calibration
inputs, and loads a folder into a function from input arrays to output features. Both run on the CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from pictag.errors import PictagError
from pictag.models.engines.towers import Tower

# 17 is the first opset with LayerNormalization as one op, which both runtimes fuse; every op of the ViT, CLIP text
# and EfficientNet graphs exists at 17.
OPSET = 17

Run = Callable[[dict[str, np.ndarray]], np.ndarray]


class Runtime:
    """One engine: how to export, quantize and run a tower with it.

    Attributes:
        name: The `--engine` value.
        extra: The pictag extra that installs it.
        modules: Python modules it needs.
        precisions: Inference precisions it runs on the CPU.
    """

    name: str = ""
    extra: str = ""
    modules: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    file: str = ""

    def require(self) -> None:
        """Check that the engine is installed.

        Raises:
            PictagError: one line naming the extra to install.
        """
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                raise PictagError(
                    f"--engine {self.name} needs {module}, which is not installed: pip install 'pictag[{self.extra}]'"
                ) from None

    def installed(self) -> bool:
        try:
            self.require()
        except PictagError:
            return False
        return True

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {m: version(m) for m in self.modules}

    def check_precision(self, precision: str) -> None:
        """Refuse a precision this engine does not run on the CPU, naming what does."""
        if precision not in self.precisions:
            raise PictagError(self._no_precision(precision))

    def _no_precision(self, precision: str) -> str:
        return f"--engine {self.name} runs {', '.join(self.precisions)} on the CPU, not {precision}"

    def export(self, tower: Tower, folder: Path) -> None:
        raise NotImplementedError

    def quantize(self, fp32: Path, calibration: Sequence[dict[str, np.ndarray]], folder: Path, transformer: bool):
        raise NotImplementedError

    def load(self, folder: Path, precision: str, threads: int) -> Run:
        raise NotImplementedError


class OnnxRuntime(Runtime):
    name, extra, modules, file = "onnx", "onnx", ("onnx", "onnxruntime"), "model.onnx"

    def _no_precision(self, precision: str) -> str:
        return (
            f"ONNX Runtime has no {precision} kernels on the CPU for most operators (it would cast back to fp32 "
            f"around each): use --engine openvino for {precision}, or --precision fp32 with --engine onnx"
        )

    def export(self, tower: Tower, folder: Path) -> None:
        # Traced with gradients on: under no_grad, nn.MultiheadAttention takes a fused fast path that has no ONNX op.
        with _quiet():
            # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, and both give the same graph
            # for these towers.
            torch.onnx.export(
                tower.module,
                tuple(tower.example.values()),
                str(folder / self.file),
                input_names=list(tower.example),
                output_names=list(tower.outputs),
                dynamic_axes={**tower.dynamic, **{name: {0: "batch"} for name in tower.outputs}},
                opset_version=OPSET,
                dynamo=False,
            )

    def quantize(self, fp32: Path, calibration: Sequence[dict[str, np.ndarray]], folder: Path, transformer: bool):
        from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(calibration)

            def get_next(self):
                return next(self.items, None)

        prepared = folder / "prepared.onnx"
        with _quiet():
            quant_pre_process(str(fp32 / self.file), str(prepared), skip_symbolic_shape=True)
            # Weights per channel; only the matrix products and convolutions, where the time is: quantizing adds
            # and norms too costs agreement and gains little.
            quantize_static(
                str(prepared),
                str(folder / self.file),
                Reader(),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            )
        prepared.unlink()

    def load(self, folder: Path, precision: str, threads: int) -> Run:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(folder / self.file), options, providers=["CPUExecutionProvider"])

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return session.run(None, inputs)[0]

        return run


class OpenVinoRuntime(Runtime):
    name, extra, modules, file = "openvino", "openvino", ("openvino", "nncf"), "model.xml"
    precisions = ("fp32", "bf16")

    def check_precision(self, precision: str) -> None:
        super().check_precision(precision)
        if precision == "bf16" and "BF16" not in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise PictagError("this CPU has no native bf16 (OpenVINO would emulate it, slower than fp32): use fp32")

    def export(self, tower: Tower, folder: Path, onnx: Path | None = None) -> None:
        """Convert `onnx` (the tower's ONNX export) when given, else trace the module with OpenVINO's frontend."""
        import openvino as ov

        if onnx is not None:
            # OpenVINO reads an ONNX graph in a fraction of the time its PyTorch frontend takes to trace the module
            # (4 s against 40 s for ViT-B/32), to the same result.
            model = ov.convert_model(onnx)
        else:
            shapes = []
            for name, example in tower.example.items():
                dims = [-1 if axis in tower.dynamic.get(name, {}) else n for axis, n in enumerate(example.shape)]
                kind = ov.Type.f32 if example.is_floating_point() else ov.Type.i64
                shapes.append((name, ov.PartialShape(dims), kind))
            # Traced under no_grad, unlike for ONNX: OpenVINO reads the fused attention op, and its trace check
            # finds the graphs of two invocations different with gradients on.
            with _quiet(), torch.no_grad():
                model = ov.convert_model(tower.module, example_input=tuple(tower.example.values()), input=shapes)
        # compress_to_fp16 is on by default: it would round the weights, and fp32 must stay exact.
        ov.save_model(model, folder / self.file, compress_to_fp16=False)

    def quantize(self, fp32: Path, calibration: Sequence[dict[str, np.ndarray]], folder: Path, transformer: bool):
        import nncf
        import openvino as ov

        model = _ov_core().read_model(fp32 / self.file)
        with _quiet():
            quantized = nncf.quantize(
                model,
                nncf.Dataset(list(calibration)),
                subset_size=len(calibration),
                # NNCF's transformer scheme keeps softmax, norms and the like in float: for ViTs that is the
                # difference between ~99% and ~90% top-1 agreement.
                model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            )
        ov.save_model(quantized, folder / self.file, compress_to_fp16=False)

    def load(self, folder: Path, precision: str, threads: int) -> Run:
        config = {
            # OpenVINO's default on a CPU with bf16 is bf16: fp32 must be asked for.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
        }
        compiled = _ov_core().compile_model(str(folder / self.file), "CPU", config)
        request = compiled.create_infer_request()

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            request.infer(inputs)
            # The output tensor is reused by the next call: copy it out.
            return np.array(request.get_output_tensor(0).data, copy=True)

        return run


_CORE = None


def _ov_core():
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


@contextlib.contextmanager
def _quiet():
    # Exporters warn about every traced shape computation and constant; none of it is the user's to act on.
    import logging

    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        # NNCF draws progress bars on stdout, which is the command's output.
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_logger.setLevel(level)


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (OnnxRuntime(), OpenVinoRuntime())}
