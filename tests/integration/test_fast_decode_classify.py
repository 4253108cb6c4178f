"""`--decode fast` through classify and embed: recorded in the config, and a resume must keep it."""

from __future__ import annotations

import pytest
import yaml

from pictag import classify
from pictag.errors import PictagError
from pictag.store.embed import embed
from pictag.store.store import Manifest

pytest.importorskip("simplejpeg", reason="the fast-decode extra is not installed")


def test_classify_decodes_fast_and_records_it(tmp_path, photo_dir, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    out = tmp_path / "out.csv"
    result = classify(str(photo_dir), str(out), "cat,dog,rocket", model=spec, checkpoint=str(checkpoint), decode="fast")
    assert result.classified == len(list(photo_dir.glob("*.jpg"))) and result.errors == 0
    assert yaml.safe_load(result.config_out.read_text())["decode"] == "fast"


@pytest.mark.parametrize("command", ["classify", "embed"])
def test_an_interrupted_run_resumes_only_with_the_same_decode(tmp_path, photo_dir, command):
    # An interrupted run: its saved config (and, for a store, its incomplete manifest) is all a resume reads first.
    if command == "classify":
        parts = tmp_path / "run.csv.parts"
        parts.mkdir()
        resume = lambda: classify(str(photo_dir), str(tmp_path / "run.csv"), "a,b", resume=True, decode="fast")  # noqa: E731
    else:
        parts = tmp_path / "store"
        parts.mkdir()
        Manifest(model="m", weights_id="w", preprocess="p", dim=4).write(parts)
        resume = lambda: embed(str(photo_dir), str(parts), resume=True, decode="fast")  # noqa: E731
    (parts / "run.yaml").write_text(yaml.safe_dump({"source": str(photo_dir), "decode": "exact"}))
    with pytest.raises(PictagError, match="decode changed since the interrupted run"):
        resume()
