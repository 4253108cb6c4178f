"""Property tests (hypothesis, bounded): the decoder's refusal paths and tar index reading.

Whatever bytes, sizes or index rows come in, the answer is an image, a record, or one of pictag's own errors
(`DecodeError` for a record, `PictagError` for the run): never another exception.
"""

from __future__ import annotations

import io
import itertools
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile_inputs import encode, thin_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pictag.data import build_tar_index, open_source
from pictag.data.decode import DecodeError, ImageTooLarge, check_size, decode_image
from pictag.errors import PictagError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_unique = itertools.count()


@FUZZ
@given(
    width=st.integers(1, 10**6),
    height=st.integers(1, 10**6),
    max_pixels=st.integers(1, 10**9),
    max_ratio=st.floats(1, 1000),
)
def test_check_size_refuses_exactly_what_is_above_a_limit_and_names_it(width, height, max_pixels, max_ratio):
    too_many = width * height > max_pixels
    too_thin = max(width, height) / min(width, height) > max_ratio
    try:
        check_size(width, height, max_pixels, max_ratio)
    except ImageTooLarge as refused:
        assert refused.limit == ("max_pixels" if too_many else "max_aspect_ratio")
        assert refused.limit in str(refused) and "\n" not in str(refused)
    else:
        assert not (too_many or too_thin)


@FUZZ
@given(width=st.integers(1, 400), height=st.integers(1, 400), max_ratio=st.sampled_from([1.0, 2.5, 50.0]))
def test_decode_refuses_a_real_image_exactly_when_check_size_does(width, height, max_ratio):
    data = thin_png(width, height)
    try:
        check_size(width, height, max_aspect_ratio=max_ratio)
        expected = None
    except ImageTooLarge as refused:
        expected = refused.limit
    try:
        assert decode_image(data, (224, 224), max_aspect_ratio=max_ratio).size == (width, height)
        assert expected is None
    except ImageTooLarge as refused:
        assert refused.limit == expected


_SAMPLES = [
    encode(Image.new("RGB", (24, 16), (90, 20, 200)), fmt, **options)
    for fmt, options in [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {}), ("TIFF", {}), ("BMP", {})]
]


@FUZZ
@given(
    sample=st.sampled_from(_SAMPLES),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=6),
)
def test_damaged_images_decode_or_raise_decode_error_only(sample, cut, flips):
    data = bytearray(sample[: max(1, int(len(sample) * cut))] if cut < 0.9 else sample)
    for where, value in flips:
        data[int(where * (len(data) - 1))] ^= value
    try:
        img = decode_image(bytes(data), (224, 224))
    except DecodeError as exc:
        assert "\n" not in str(exc)
    else:
        assert img.mode == "RGB"


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_decode_error_only(data):
    try:
        decode_image(data)
    except DecodeError:
        pass


@pytest.fixture(scope="module")
def tar_dir():
    with tempfile.TemporaryDirectory(prefix="pictag-prop-") as folder:
        tar = Path(folder) / "zip1.tar"
        with tarfile.open(tar, "w") as archive:
            for i in range(4):
                info = tarfile.TarInfo(f"{i}.jpg")
                data = _SAMPLES[1]
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        yield tar


_rows = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["0.jpg", "1.jpg", "2.jpg", "3.jpg", "x.jpg"]), st.text(max_size=8)),
        st.integers(-(2**40), 2**40) | st.sampled_from([0, 512, 1024, 2048]),
        st.integers(-10, 2**20) | st.just(len(_SAMPLES[1])),
    ),
    max_size=8,
)


@FUZZ
@given(rows=_rows)
def test_any_index_opens_with_checked_records_or_is_refused_in_one_line(tar_dir, rows):
    index = tar_dir.parent / f"i{next(_unique)}.parquet"  # a new name each time: indexes are cached by path
    keys, offsets, sizes = zip(*rows) if rows else ((), (), ())
    pq.write_table(
        pa.table({"key": pa.array(keys, pa.string()), "offset": pa.array(offsets, pa.int64()),
                  "size": pa.array(sizes, pa.int64())}),
        index,
    )  # fmt: skip
    try:
        source = open_source(tar_dir, index=index)
    except PictagError as refused:
        assert "\n" not in str(refused)
        return
    for record in source:  # each row is the member it names, or an error record
        assert (record.data is None) == (record.error is not None)


@FUZZ
@given(cut=st.integers(0, 6 * 1024), garbage=st.binary(max_size=64))
def test_any_cut_or_garbled_tar_is_indexed_or_refused_in_one_line(tar_dir, cut, garbage):
    tar = tar_dir.parent / f"t{next(_unique)}.tar"
    tar.write_bytes(tar_dir.read_bytes()[:cut] + garbage)
    try:
        index = build_tar_index(tar)
    except PictagError as refused:
        assert "\n" not in str(refused)
        return
    try:
        records = list(open_source(tar, index=index))
    except PictagError as refused:
        assert "\n" not in str(refused)
        return
    assert all((r.data is None) == (r.error is not None) for r in records)
