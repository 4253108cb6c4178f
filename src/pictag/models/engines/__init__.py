"""Compiled engines for an encoder's towers: ONNX Runtime and OpenVINO (fp32, bf16, int8), beside torch eager.

    from pictag.models import create_model
    from pictag.models.engines import compile_encoder

    encoder = compile_encoder(create_model("open_clip:ViT-B-32/openai", device="cpu"), "openvino")

The compiled encoder has the torch encoder's contract (`encode_image`, `encode_text`, preprocessing, weights id),
so every job runs on it unchanged. Exports are cached in $PICTAG_CACHE/engines.
"""

from pictag.models.engines.encoder import ENGINES, Compiled, EngineEncoder, compile_encoder, runtime

__all__ = ["ENGINES", "Compiled", "EngineEncoder", "compile_encoder", "runtime"]
