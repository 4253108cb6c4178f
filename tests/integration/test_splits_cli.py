"""`pictag splits` on a synthetic folder of classes with {ID}_{seq} file names."""

from __future__ import annotations

import csv
import os
from collections import defaultdict

from PIL import Image

from pictag.cli.main import main
from pictag.data.splits import read_splits


def make_folder(root, classes=3, ids=10, views=3, small=("c0/o0",)):
    """classes × ids objects of `views` images; the objects in `small` have one 16 px image."""
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(ids):
            for v in range(views):
                side = 16 if f"c{c}/o{i}" in small and v == 1 else 40
                Image.new("RGB", (side, 48), (c * 60, i * 20, v * 80)).save(root / f"c{c}" / f"c{c}o{i}_{v}.png")
    return root


def test_splits_groups_ids_filters_small_ones_and_writes_a_readable_csv(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    (data / "c2" / "stray.png").write_bytes((data / "c2" / "c2o0_0.png").read_bytes())
    out = tmp_path / "out" / "splits.csv"
    assert main(["splits", str(data), "--out", str(out), "--min-size", "32", "--ratios", "0.6,0.2,0.2"]) == 0
    printed = capsys.readouterr().out
    assert "1 ID(s) (3 images) with an image below --min-size 32" in printed and "c0o0" in printed
    assert "1 image(s) whose name does not match" in printed
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 3 * 10 * 3 - 3
    assert rows[0]["path"].startswith("../data/c0/")
    where = defaultdict(set)
    for row in rows:
        where[row["id"]].add(row["split"])
    assert all(len(s) == 1 for s in where.values()) and "c0o0" not in where
    # 10 IDs of class c1 at 0.6/0.2/0.2 are exactly 6/2/2 IDs.
    assert sorted(r["split"] for r in rows if r["class"] == "c1").count("train") == 18
    table = read_splits(out, root=data)
    assert set(table.select("test").keys()) <= {f"{r['class']}/{r['path'].rsplit('/', 1)[1]}" for r in rows}
    assert all(os.path.isfile(p) for p in table.paths)
    # Seeded: a rerun writes the same file.
    first = out.read_text()
    assert (
        main(["splits", str(data), "--out", str(out), "--min-size", "32", "--ratios", "0.6,0.2,0.2", "--overwrite"])
        == 0
    )
    assert out.read_text() == first and (tmp_path / "out" / "splits.config.yaml").is_file()


def test_splits_by_class_and_the_one_line_errors(tmp_path, capsys):
    data = make_folder(tmp_path / "data", classes=4, ids=2, views=2, small=())
    out = tmp_path / "splits.csv"
    assert main(["splits", str(data), "--out", str(out), "--by", "class", "--ratios", "0.5,0.25,0.25"]) == 0
    per_class = {r["class"]: r["split"] for r in csv.DictReader(open(out))}
    assert sorted(per_class.values()) == ["test", "train", "train", "val"]
    capsys.readouterr()

    def error(*argv):
        assert main(["splits", str(data), "--out", str(tmp_path / "x.csv"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "did you mean c1" in error("--classes", "c0,c1x")
    assert "sum to 1.1, not 1" in error("--ratios", "0.7,0.2,0.2")
    assert "no file name of" in error("--id-pattern", r"^(?P<id>\d+)-")
    assert "group named id" in error("--id-pattern", "(.+)_")
    (data / "c1" / "c0o1_9.png").write_bytes((data / "c0" / "c0o1_0.png").read_bytes())
    assert "ID 'c0o1' is in class folders 'c0' and 'c1'" in error()
    assert main(["splits", str(data), "--out", str(out)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
