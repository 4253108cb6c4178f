"""`pictag classify --gallery STORE` takes the model and checkpoint from the store's manifest, as search does."""

from __future__ import annotations

import yaml

from pictag.cli.main import main
from pictag.testing import save_colour_objects


def test_gallery_brings_its_model_and_checkpoint(tmp_path, tiny_open_clip, capsys):
    spec, checkpoint = tiny_open_clip
    data = save_colour_objects(tmp_path / "data", objects=2, views=2)
    store = tmp_path / "store"
    runtime = ["--device", "cpu", "--workers", "0"]
    assert main(["embed", str(data), "--out", str(store), "--labelled", "--model", spec, "--checkpoint",
                 str(checkpoint), *runtime]) == 0  # fmt: skip
    implied, given = tmp_path / "implied.csv", tmp_path / "given.csv"
    assert main(["classify", str(data), "--gallery", str(store), "--knn-k", "3", *runtime, "--out", str(implied)]) == 0
    assert main(["classify", str(data), "--gallery", str(store), "--knn-k", "3", *runtime, "--model", spec,
                 "--checkpoint", str(checkpoint), "--out", str(given)]) == 0  # fmt: skip
    assert implied.read_text() == given.read_text()
    resolved = yaml.safe_load((tmp_path / "implied.config.yaml").read_text())
    assert (resolved["model"], resolved["checkpoint"]) == (spec, str(checkpoint))
    # Another checkpoint of the same architecture is another model: one line.
    capsys.readouterr()
    argv = ["classify", str(data), "--gallery", str(store), "--model", spec, "--random-weights", *runtime]
    assert main([*argv, "--out", str(tmp_path / "other.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"was made with {spec}" in err
