"""Export equality: each exported form of a trained EfficientNet-Lite0 classifier run against pictag's own scores.

Trains a run on the hymenoptera training split (real ImageNet Lite0 weights, one epoch, fp32), exports it as an hf
folder, ONNX and OpenVINO, and prints the largest |difference| of every class score (and of the embedding for the
graphs, of the pooled features for the folder's timm backbone) on 32 real validation photos:
transformers' `pipeline("image-classification")` against pictag's encoder and head on the same decoded pixels and
against `pictag classify` end to end (which decodes large JPEGs in draft mode), onnxruntime and OpenVINO on
pictag's crops against pictag's encoder and head.

    python benchmarks/export_equality.py [--run RUN] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from _shared import DATASETS, LITE0, lite0_weights
from PIL import Image

from pictag.cli.main import main
from pictag.models.run_dir import load_run

PHOTOS = 32


def run_pictag(argv: list[str]) -> None:
    if main(argv) != 0:
        raise SystemExit(f"pictag {' '.join(argv)} failed")


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an existing classifier run on a timm backbone (else one is trained)")
    parser.add_argument("--work", help="folder for the run and the exports (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="pictag-export-"))
    data = DATASETS / "hymenoptera" / "hymenoptera_data"
    run = Path(args.run) if args.run else work / "run"
    if not args.run and not (run / "best").is_dir():
        run_pictag(["train", str(data / "train"), "--model", LITE0, "--checkpoint", lite0_weights(), "--epochs", "1",
                    "--precision", "fp32", "--workers", "0", "--out", str(run)])  # fmt: skip
    photos = work / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    for path in sorted((data / "val").rglob("*.jpg"))[:: max(1, len(list((data / "val").rglob("*.jpg"))) // PHOTOS)][
        :PHOTOS
    ]:
        shutil.copy(path, photos / f"{path.parent.name}_{path.name}")
    for form in ("hf", "onnx", "openvino"):
        run_pictag(["export", str(run), "--format", form, "--out", str(work / form), "--overwrite"])

    loaded = load_run(run, device="cpu", precision="fp32")
    names = sorted(p.name for p in photos.iterdir())
    crops = torch.from_numpy(
        np.stack([loaded.encoder.preprocess.crop(Image.open(photos / n).convert("RGB")) for n in names])
    )
    pixels = loaded.encoder.preprocess.normalize(crops)
    with torch.no_grad():
        features = loaded.encoder.encode_image(pixels, normalize=False)
        embedding = torch.nn.functional.normalize(features, dim=-1).numpy()
        scores = loaded.head.scores(torch.nn.functional.normalize(features, dim=-1)).numpy()
    classes = loaded.classes
    rows = []

    # transformers' pipeline on the files, against pictag classify on the same files (both decode and crop).
    from transformers import pipeline

    out = work / "pictag.parquet"
    run_pictag(["classify", str(photos), "--model", str(run), "--top-k", str(len(classes)), "--precision", "fp32",
                "--workers", "0", "--out", str(out), "--overwrite"])  # fmt: skip
    import pyarrow.parquet as pq

    ours = {r["key"]: r for r in pq.read_table(out).to_pylist()}
    classifier = pipeline("image-classification", model=str(work / "hf"), trust_remote_code=True)
    answers = classifier([str(photos / n) for n in names], top_k=len(classes))
    # pictag's classify decodes a large JPEG in libjpeg's draft mode (scaled down in the DCT domain), the pipeline
    # decodes it whole: on such a photo the two crops differ, so the model is also compared on the same pixels.
    same_pixels, end_to_end, differing = 0.0, 0.0, []
    for row, (name, answer) in enumerate(zip(names, answers, strict=True)):
        mine = {ours[name][f"label_{i}"]: ours[name][f"score_{i}"] for i in range(1, len(classes) + 1)}
        delta = max(abs(mine[a["label"]] - a["score"]) for a in answer)
        end_to_end = max(end_to_end, delta)
        if delta > 1e-5:
            differing.append(f"{name} {Image.open(photos / name).size}")
        same_pixels = max(
            same_pixels, *(abs(float(scores[row, classes.index(a["label"])]) - a["score"]) for a in answer)
        )
    rows.append(("hf pipeline vs pictag, same pixels", "scores", same_pixels))
    rows.append(("hf pipeline vs pictag classify", "scores", end_to_end))

    import timm

    backbone = timm.create_model(f"local-dir:{work / 'hf' / 'timm'}", pretrained=True).eval()
    with torch.no_grad():
        rows.append(("hf timm/ backbone (timm)", "features", float((backbone(pixels) - features).abs().max())))

    import onnxruntime
    import openvino as ov

    session = onnxruntime.InferenceSession(str(work / "onnx" / "model.onnx"))
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": crops.numpy()}), strict=True))
    compiled = ov.Core().compile_model(str(work / "openvino" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(crops.numpy())
    got_ov = {o.get_any_name(): result[o] for o in compiled.outputs}
    for form, outputs in (("onnx (onnxruntime)", got), ("openvino", got_ov)):
        rows.append((form, "scores", float(np.abs(outputs["scores"] - scores).max())))
        rows.append((form, "embedding", float(np.abs(outputs["embedding"] - embedding).max())))

    print(f"{len(names)} photos of {data / 'val'}, run {run} ({loaded.meta['backbone']}, {len(classes)} classes)")
    print(f"{'form':<36} {'output':<10} max |delta|")
    for form, output, value in rows:
        print(f"{form:<36} {output:<10} {value:.2e}")
    print(f"classify against the pipeline beyond 1e-5 (draft-mode JPEG decode): {', '.join(differing) or 'none'}")


if __name__ == "__main__":
    main_()
