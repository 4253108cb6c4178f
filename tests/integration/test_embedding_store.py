"""Embed once, then re-classify, search and calibrate from the store, with a tiny open_clip model, offline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import photos, subprocess_env
from pictag.cli.main import main
from pictag.data.decode import decode_image
from pictag.models import create_model
from pictag.store.search import search
from pictag.store.store import EmbeddingStore

LABELS = "cat,astronaut,cup of coffee,rocket,camera man"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """20 real photos: skimage's five, each also mirrored, cropped and darkened."""
    folder = tmp_path_factory.mktemp("images")
    for name, img in photos().items():
        w, h = img.size
        variants = {
            "": img,
            "-mirror": img.transpose(Image.FLIP_LEFT_RIGHT),
            "-crop": img.crop((w // 8, h // 8, w - w // 8, h - h // 8)),
            "-dark": img.point(lambda v: v // 2),
        }
        for suffix, variant in variants.items():
            variant.resize((300, round(300 * variant.height / variant.width))).save(folder / f"{name}{suffix}.jpg")
    return folder


@pytest.fixture(scope="module")
def model_args(tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    return ["--model", spec, "--checkpoint", str(checkpoint)]


@pytest.fixture(scope="module")
def store(tmp_path_factory, image_dir, model_args):
    out = tmp_path_factory.mktemp("store") / "emb"
    assert main(["embed", str(image_dir), "--out", str(out), "--workers", "0", *model_args]) == 0
    return EmbeddingStore(out)


def test_store_round_trip(store, image_dir, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    m = store.manifest
    assert (m.model, m.weights_id, m.preprocess) == (spec, encoder.weights_id, encoder.preprocess.fingerprint)
    assert (m.dim, m.dtype, m.count, m.errors, m.source) == (16, "float16", 20, 0, str(image_dir))
    keys, stored = store.get(["rocket.jpg", "chelsea-dark.jpg"])
    for key, vector in zip(keys, stored):
        image = decode_image((image_dir / key).read_bytes(), encoder.preprocess.min_decode_size)
        direct = encoder.encode_image(encoder.preprocess(image).unsqueeze(0))[0]
        np.testing.assert_allclose(vector, direct.numpy(), atol=1e-3)
    assert sorted(store.keys()) == sorted(p.name for p in image_dir.glob("*.jpg"))


def test_reclassify_equals_classify_from_images(store, image_dir, model_args, tmp_path):
    direct, stored = tmp_path / "direct.parquet", tmp_path / "stored.parquet"
    common = ["--labels", LABELS, "--top-k", "3", "--templates", "imagenet80"]
    assert main(["classify", str(image_dir), "--out", str(direct), "--workers", "0", *common, *model_args]) == 0
    assert main(["classify", "--embeddings", str(store.folder), "--out", str(stored), *common]) == 0
    a = pq.read_table(direct).sort_by("key").to_pydict()
    b = pq.read_table(stored).sort_by("key").to_pydict()
    assert (
        list(a)
        == list(b)
        == ["key", "label", "score", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3"]
    )
    assert a["key"] == b["key"] and a["label_1"] == b["label_1"]
    for column in ("score_1", "score_2", "score_3"):
        np.testing.assert_allclose(a[column], b[column], atol=1e-3)
    assert max(a["score_1"]) > 0.5, "scores too flat for the comparison to mean much"
    resolved = yaml.safe_load((tmp_path / "stored.config.yaml").read_text())
    assert resolved["embeddings"] == str(store.folder) and resolved["model"] == store.manifest.model


def test_store_used_with_another_model_is_refused(store, tiny_hf_clip, tmp_path, capsys):
    out = str(tmp_path / "r.csv")
    code = main(
        [
            "classify",
            "--embeddings",
            str(store.folder),
            "--labels",
            "a,b",
            "--model",
            f"hf:{tiny_hf_clip}",
            "--out",
            out,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "was made with open_clip:pictag-tiny" in err and "--model open_clip:pictag-tiny" in err
    assert main(["search", str(store.folder), "--text", "a cat", "--model", f"hf:{tiny_hf_clip}"]) == 2
    assert "re-embed" in capsys.readouterr().err
    code = main(["classify", "--embeddings", str(store.folder), "--labels", "a,b", "--random-weights", "--out", out])
    assert code == 2 and "weights random:0" in capsys.readouterr().err


def test_search_text_and_image(store, image_dir, capsys):
    assert main(["search", str(store.folder), "--image", str(image_dir / "rocket.jpg"), "--top-k", "4", "--paths"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "searched with: exact scan of 20 vectors (no saved index: `pictag index-embeddings` builds one)"
    rank, score, key, path = lines[1].split()
    assert (rank, key, path) == ("1", "rocket.jpg", str(image_dir / "rocket.jpg")) and float(score) > 0.999
    table = search(store, text=["a rocket", "a cat"], k=5)
    assert table.column_names == ["query", "rank", "key", "score"] and table.num_rows == 10
    scores = table.column("score").to_pylist()
    assert scores[:5] == sorted(scores[:5], reverse=True)
    # With a saved (flat) index the answers are the same.
    assert main(["index-embeddings", str(store.folder)]) == 0
    assert "exact (flat)" in capsys.readouterr().out
    indexed = search(store, text=["a rocket", "a cat"], k=5)
    assert indexed.column("key").to_pylist() == table.column("key").to_pylist()
    np.testing.assert_allclose(indexed.column("score").to_pylist(), scores, atol=1e-5)
    (store.folder / "index.faiss").unlink()


@pytest.fixture(params=["memory", "file", "s3"])
def url(request, tmp_path):
    """Where a store goes on an fsspec URL: fsspec's in-memory file system (this process only), a file:// URL, or a
    bucket on an S3 server over HTTP (s3fs: ranged GETs, PUTs, listings)."""
    if request.param == "memory":
        return request.getfixturevalue("memory_url")
    if request.param == "s3":
        return f"{request.getfixturevalue('s3')}/{tmp_path.name}/emb"
    return f"file://{tmp_path}/emb"


def test_a_store_on_a_url_works_like_a_local_one(store, url, image_dir, model_args, tmp_path, capsys):
    assert main(["embed", str(image_dir), "--out", url, "--workers", "0", *model_args]) == 0
    remote = EmbeddingStore(url)
    assert remote.folder == (tmp_path / "emb" if url.startswith("file://") else url)
    assert remote.manifest.shards == store.manifest.shards  # the same bytes, wherever they are
    assert list(remote.keys()) == list(store.keys())
    for (keys, vectors), (local_keys, local_vectors) in zip(remote.iter_arrays(), store.iter_arrays(), strict=True):
        assert keys.equals(local_keys)
        np.testing.assert_array_equal(vectors, local_vectors)

    common = ["--labels", LABELS, "--top-k", "3"]
    for name, embeddings in (("local.parquet", str(store.folder)), ("url.parquet", url)):
        assert main(["classify", "--embeddings", embeddings, "--out", str(tmp_path / name), *common]) == 0
    assert pq.read_table(tmp_path / "url.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    truth = truth_csv(tmp_path)
    for name, embeddings in (("local.yaml", str(store.folder)), ("url.yaml", url)):
        assert main(["calibrate", embeddings, "--labels", LABELS, "--truth", truth, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "url.yaml").read_text() == (tmp_path / "local.yaml").read_text()

    exact = search(remote, text=["a rocket", "a cat"], k=5)
    assert exact.column("key").equals(search(store, text=["a rocket", "a cat"], k=5).column("key"))
    assert main(["index-embeddings", url]) == 0
    assert "exact (flat)" in capsys.readouterr().out
    indexed = search(remote, text=["a rocket", "a cat"], k=5)
    assert indexed.schema.metadata[b"searched_with"].startswith(b"flat index")
    assert indexed.column("key").equals(exact.column("key"))

    assert main(["embed", str(image_dir), "--out", url, *model_args]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert main(["embed", str(image_dir), "--out", url, "--workers", "0", "--overwrite", *model_args]) == 0
    assert not EmbeddingStore(url).files.exists("index.faiss")  # the index of the store it replaced is gone
    assert EmbeddingStore(url).manifest.shards == store.manifest.shards


def test_embed_resumes_exactly_once_after_kill(tmp_path, tiny_hf_clip):
    model_args = ["--model", f"hf:{tiny_hf_clip}"]  # a saved model: the child process can load it too
    images = tmp_path / "many"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(160):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{i:04d}.png")
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "pictag", "embed", str(images), "--out", str(out), "--workers", "0"]
    cmd += ["--batch-size", "2", "--unit-size", "4", *model_args]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list(out.glob("part-*.parquet")))
    assert 0 < committed < 40, "the run must be killed part-way for this test to mean anything"
    assert main(["embed", str(images), "--out", str(out), *model_args]) == 2  # interrupted: asks for --resume
    resume = ["--workers", "0", "--resume", *model_args]
    assert main(["embed", str(images), "--out", str(out), "--unit-size", "8", *resume]) == 2  # another plan
    assert main(["embed", str(images), "--out", str(out), "--unit-size", "4", *resume]) == 0
    store = EmbeddingStore(out)
    keys = list(store.keys())
    assert len(store) == len(keys) == len(set(keys)) == 160


def truth_csv(folder) -> str:
    """The true label of each of the 20 images, as `pictag calibrate --truth` takes it."""
    truth = {
        "chelsea": "cat",
        "astronaut": "astronaut",
        "coffee": "cup of coffee",
        "rocket": "rocket",
        "camera": "camera man",
    }
    rows = [
        f"{stem}{suffix}.jpg,{label}" for stem, label in truth.items() for suffix in ("", "-mirror", "-crop", "-dark")
    ]
    (folder / "truth.csv").write_text("key,label\n" + "\n".join(rows) + "\n")
    return str(folder / "truth.csv")


def test_calibration_applied_by_classify(store, image_dir, tmp_path, capsys):
    labels = LABELS.split(",")
    truth_csv(tmp_path)
    calib = tmp_path / "calib.yaml"
    code = main(
        [
            "calibrate",
            str(store.folder),
            "--labels",
            LABELS,
            "--truth",
            str(tmp_path / "truth.csv"),
            "--out",
            str(calib),
        ]
    )
    assert code == 0
    report = capsys.readouterr().out
    assert "temperature" in report and "coverage  accuracy  threshold" in report
    assert (tmp_path / "calib.coverage.png").stat().st_size > 1000
    fitted = yaml.safe_load(calib.read_text())
    assert set(fitted["thresholds"]) == set(labels) and fitted["temperature"] > 0
    assert fitted["summary"]["nll_after"] <= fitted["summary"]["nll_before"] + 1e-6

    out = tmp_path / "calibrated.csv"
    cmd = ["classify", "--embeddings", str(store.folder), "--labels", LABELS, "--calibration", str(calib)]
    assert main([*cmd, "--out", str(out)]) == 0
    rows = pacsv.read_csv(out).to_pylist()
    for row in rows:
        expected = "unknown" if row["score_1"] < fitted["thresholds"][row["label_1"]] else row["label_1"]
        assert row["label"] == expected
    assert main([*cmd[:-2], "--labels", "cat,dog", "--calibration", str(calib), "--out", str(tmp_path / "x.csv")]) == 2
    assert "other labels" in capsys.readouterr().err


def test_python_api(store, tmp_path):
    import pictag

    assert pictag.EmbeddingStore is EmbeddingStore
    result = pictag.classify(None, str(tmp_path / "api.csv"), labels=LABELS, embeddings=str(store.folder), top_k=2)
    assert result.classified == 20
    hits = pictag.search(store.folder, text="a rocket", k=3)
    assert hits.num_rows == 3
    assert len(pictag.EmbeddingStore(store.folder).keys()) == 20
