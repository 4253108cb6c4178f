"""`pictag embed --labelled` keeps labels in the store; `pictag classify --gallery STORE` labels images by kNN vote."""

from __future__ import annotations

import csv
import shutil

import pytest

from conftest import upload
from pictag.cli.main import main
from pictag.store.store import EmbeddingStore
from pictag.testing import save_colour_objects

MODEL = ["--model", "timm:test_efficientnet_gn", "--random-weights", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A labelled store of 4 colour classes × 3 objects × 3 views, and 4 classes × 2 new objects to classify."""
    root = tmp_path_factory.mktemp("gallery")
    data = save_colour_objects(root / "data", objects=5, seed=0)
    queries = root / "queries"
    for folder in data.iterdir():
        for path in folder.glob(f"{folder.name}[34]_*.png"):  # objects 3 and 4 are never in the gallery
            (queries / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.move(path, queries / folder.name / path.name)
    assert main(["embed", str(data), "--out", str(root / "store"), "--labelled", *MODEL]) == 0
    return root / "store", queries


def test_embed_labelled_keeps_each_images_class(gallery):
    store = EmbeddingStore(gallery[0])
    assert store.manifest.labelled and len(store) == 4 * 3 * 3
    assert [key.split("/")[0] for key in store.keys()] == list(store.labels())


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_classify_gallery_votes_the_class_of_new_objects(gallery, tmp_path, weights):
    store, queries = gallery
    out = tmp_path / "preds.csv"
    argv = ["classify", str(queries), "--gallery", str(store), "--knn-k", "3", "--knn-weights", weights, "--top-k", "2"]
    assert main([*argv, *MODEL, "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4 * 2 * 3 and {"label_2", "score_2"} <= set(rows[0])
    correct = sum(row["label"] == row["key"].split("/")[0] for row in rows)
    assert correct / len(rows) >= 0.75  # 4 classes: chance is 0.25
    # --threshold applies to the vote share, as to zero-shot scores.
    strict = tmp_path / "strict.csv"
    assert main([*argv, *MODEL, "--out", str(strict), "--threshold", "1.01"]) == 0
    assert {row["label"] for row in csv.DictReader(open(strict))} == {"unknown"}


def test_a_gallery_on_object_storage_votes_as_the_local_one(gallery, tmp_path, memory_url):
    store, queries = gallery
    upload(store, memory_url)  # a store copied file by file to object storage is the same store
    for name, where in (("local.csv", str(store)), ("url.csv", memory_url)):
        assert (
            main(["classify", str(queries), "--gallery", where, "--knn-k", "3", *MODEL, "--out", str(tmp_path / name)])
            == 0
        )
    assert (tmp_path / "url.csv").read_text() == (tmp_path / "local.csv").read_text()


def test_gallery_errors_are_one_line(gallery, tmp_path, capsys):
    store, queries = gallery

    def error(*argv):
        assert main(["classify", str(queries), "--out", str(tmp_path / "x.csv"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "more than the gallery's 36 image(s)" in error("--gallery", str(store), "--knn-k", "50", *MODEL)
    other = ["--model", "timm:test_efficientnet", *MODEL[2:]]
    assert "was made with timm:test_efficientnet_gn" in error("--gallery", str(store), *other)
    assert "cannot take --labels" in error("--gallery", str(store), "--labels", "a,b", *MODEL)
    plain = tmp_path / "plain"
    assert main(["embed", str(queries), "--out", str(plain), *MODEL]) == 0
    assert "holds no labels" in error("--gallery", str(plain), *MODEL)


def test_a_calibration_applies_only_to_the_knn_vote_it_was_fitted_on(gallery, tmp_path, capsys):
    store, queries = gallery
    query_store = tmp_path / "queries"
    assert main(["embed", str(queries), "--out", str(query_store), *MODEL]) == 0
    truth = tmp_path / "truth.csv"
    keys = EmbeddingStore(query_store).keys()
    truth.write_text("key,label\n" + "".join(f"{key},{key.split('/')[0]}\n" for key in keys))
    vote = ["--gallery", str(store), "--knn-weights", "distance"]
    calibration = tmp_path / "calib.yaml"
    argv = ["calibrate", str(query_store), *vote, "--knn-k", "3", "--truth", str(truth), "--out", str(calibration)]
    assert main([*argv, "--device", "cpu"]) == 0  # the store names its model
    classify = ["classify", "--embeddings", str(query_store), *vote, "--calibration", str(calibration), *MODEL]
    assert main([*classify, "--knn-k", "3", "--out", str(tmp_path / "same.csv")]) == 0
    capsys.readouterr()
    assert main([*classify, "--knn-k", "5", "--out", str(tmp_path / "other.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fitted for a knn head with k 3, not k 5" in err, err
