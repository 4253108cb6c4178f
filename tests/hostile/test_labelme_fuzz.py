"""Property test (hypothesis) of labelme-crops over generated labelme documents, well-formed and not: any document
gives crops and error rows, never an exception; every crop listed exists inside OUT, once."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pictag.data.labelme import crop_labelme

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SIZE = (48, 32)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
COORDINATE = st.one_of(
    st.integers(-100, 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 2**31, 10**30, 10**400, -(10**400)]),
)
POINTS = st.lists(st.tuples(COORDINATE, COORDINATE).map(list), max_size=6) | JSON
KIND = st.sampled_from(["rectangle", "polygon", "circle", "rotation", "mask", "point", "line", "linestrip"]) | JSON
LABEL = st.sampled_from(["red", "../x", "/abs", ".", "a/b", "%2F", "x" * 300]) | st.text(max_size=30) | JSON
SHAPE = st.fixed_dictionaries({}, optional={"label": LABEL, "points": POINTS, "shape_type": KIND}) | JSON
DOCUMENT = st.fixed_dictionaries(
    {"shapes": st.lists(SHAPE, max_size=5) | JSON},
    optional={
        "imagePath": st.sampled_from(["image.png", "../image.png", "/dev/zero", "missing.png"]) | JSON,
        "imageData": st.sampled_from(["", "not base64!", "aGVsbG8="]) | JSON,
        "imageWidth": st.sampled_from([SIZE[0], 10**400]) | JSON,
        "imageHeight": st.just(SIZE[1]) | JSON,
    },
)


@SETTINGS
@given(documents=st.lists(DOCUMENT, min_size=1, max_size=3), pad=st.sampled_from([0.0, 0.1, 100.0]))
def test_any_document_gives_crops_and_error_rows_never_an_exception(documents, pad):
    with tempfile.TemporaryDirectory() as tmp:
        ann, out = Path(tmp) / "ann", Path(tmp) / "out"
        (ann / "sub").mkdir(parents=True)
        Image.new("RGB", SIZE, (10, 200, 10)).save(ann / "image.png")
        for i, doc in enumerate(documents):
            text = json.dumps(doc)  # NaN and Infinity as Python writes them: labelme files may hold them too
            (ann / ("sub" if i % 2 else "") / f"{'sub__' if i % 2 == 0 else ''}{i // 2}.json").write_text(text)
        result = crop_labelme(ann, out, pad=pad)
        with open(out / "crops.csv", newline="", encoding="utf-8") as f:
            listed = [row["crop"] for row in csv.DictReader(f)]
        assert len(listed) == len(set(listed)) == result.crops
        written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
        assert written == sorted(listed)
        with open(out / "crops.errors.csv", newline="", encoding="utf-8") as f:
            assert sum(1 for _ in csv.DictReader(f)) == result.errors
