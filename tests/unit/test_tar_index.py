"""Tar indexes against their tar: truncated copies give error records, foreign indexes are refused by the member
headers (long GNU and pax names included), and the column names of other tools' indexes are recognised."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_tar
from pictag.data import build_tar_index, open_source, tar_index
from pictag.errors import PictagError

# Sizes chosen so that the tar's members start at known blocks: 1000 bytes take two blocks, plus the header.
SIZES = [1000, 3000, 1000, 3000, 1000, 3000]
PAST_END = "offset past the end of zip1.tar (truncated copy?)"


def _members(prefix: str, sizes: list[int] = SIZES) -> dict[str, bytes]:
    return {f"{prefix}{i}.jpg": bytes([i]) * size for i, size in enumerate(sizes)}


def _tar(path: Path, members: dict[str, bytes], fmt: int = tarfile.DEFAULT_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _records(source) -> dict[str, tuple[bytes | None, str | None]]:
    return {r.key: (r.data, r.error) for r in source}


def _offsets(index: Path) -> dict[str, tuple[int, int]]:
    rows = pq.read_table(index).to_pylist()
    return {r["key"]: (r["offset"], r["size"]) for r in rows}


# 1. Rows past the end of a truncated copy.


def test_truncated_copy_keeps_its_index_and_rows_past_the_end_are_error_records(tmp_path, caplog):
    members = _members("img")
    tar = _tar(tmp_path / "zip1.tar", members)
    index = build_tar_index(tar, tmp_path / "index.parquet")
    offset, _ = _offsets(index)["img3.jpg"]
    os.truncate(tar, offset + 100)  # img3 is cut in its data, img4 and img5 are gone
    with caplog.at_level(logging.WARNING):
        records = _records(open_source(tar, index=index))
    assert {k: v for k, (v, _) in records.items() if v is not None} == {
        f"img{i}.jpg": members[f"img{i}.jpg"] for i in range(3)
    }
    assert {k: e for k, (_, e) in records.items() if e is not None} == dict.fromkeys(
        ["img3.jpg", "img4.jpg", "img5.jpg"], PAST_END
    )
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == "3 index rows lie past the end of zip1.tar (truncated copy?): they go to the errors file"


def test_truncated_tar_without_an_index_is_indexed_up_to_the_cut(tmp_path, caplog):
    members = _members("img")
    tar = _tar(tmp_path / "zip1.tar", members)
    offset, _ = _offsets(build_tar_index(tar, tmp_path / "full.parquet"))["img3.jpg"]
    os.truncate(tar, offset + 100)  # no index beside it: pictag scans the headers that are left
    with caplog.at_level(logging.WARNING):
        records = _records(open_source(tar))
    assert sorted(k for k, (v, _) in records.items() if v is not None) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert {k: e for k, (_, e) in records.items() if e is not None} == {"img3.jpg": PAST_END}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ends inside its data (truncated copy?): indexed the 4 image members" in w for w in warnings)


def test_truncated_copies_in_a_pattern_give_one_warning_and_prefixed_error_keys(tmp_path, caplog):
    for shard in ("000000", "000001"):
        tar = _tar(tmp_path / "shards" / f"{shard}.tar", _members("img"))
        index = build_tar_index(tar)
        built = tar.stat()
        os.truncate(tar, _offsets(index)["img5.jpg"][0])
        os.utime(tar, ns=(built.st_atime_ns, built.st_mtime_ns))  # a copy that kept its mtime: the index is current
    with caplog.at_level(logging.WARNING):
        records = _records(open_source(f"{tmp_path}/shards/{{000000..000001}}.tar"))
    assert records["000001/img5.jpg"] == (None, "offset past the end of 000001.tar (truncated copy?)")
    assert records["000000/img4.jpg"][0] is not None
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("2 index rows lie past the end of 000000.tar, 000001.tar (truncated copy?)")


def test_truncated_remote_copy_gives_the_same_error_records_without_reading_past_the_end(tmp_path, monkeypatch):
    tar = _tar(tmp_path / "zip1.tar", _members("img"))
    index = build_tar_index(tar)
    keep = _offsets(index)["img4.jpg"][0]
    fs = fsspec.filesystem("memory")
    fs.pipe("/pictag-trunc/zip1.tar", tar.read_bytes()[:keep])
    fs.pipe("/pictag-trunc/zip1.index.parquet", index.read_bytes())
    memory = fsspec.get_filesystem_class("memory")
    cat_file, ends = memory.cat_file, []

    def spy(self, path, start=None, end=None, **kwargs):
        ends.append(end)
        return cat_file(self, path, start, end, **kwargs)

    monkeypatch.setattr(memory, "cat_file", spy)
    try:
        records = _records(open_source("memory://pictag-trunc/zip1.tar"))
    finally:
        fs.rm("/pictag-trunc", recursive=True)
    assert records["img4.jpg"] == records["img5.jpg"] == (None, PAST_END)
    assert records["img3.jpg"][0] is not None
    assert all(end <= keep for end in ends)


# 2. Indexes of another tar.


def test_index_of_another_tar_with_the_same_name_and_size_is_refused(tmp_path):
    ours = _tar(tmp_path / "a" / "zip1.tar", _members("img"))
    theirs = _tar(tmp_path / "b" / "zip1.tar", _members("pic"))
    assert ours.stat().st_size == theirs.stat().st_size
    index = build_tar_index(theirs)
    message = (
        r"index .*b/zip1.index.parquet does not belong to zip1.tar: its row 'pic0.jpg' \(1,000 bytes at offset 512\) "
        r"is 'img0.jpg' \(1,000 bytes\) in the tar: rebuild it with `pictag index .*a/zip1.tar`$"
    )
    with pytest.raises(PictagError, match=message):
        open_source(ours, index=index)


def test_index_whose_sizes_do_not_fit_the_members_is_refused(tmp_path):
    ours = _tar(tmp_path / "a" / "zip1.tar", _members("img"))
    theirs = _tar(tmp_path / "b" / "zip1.tar", _members("img", SIZES[::-1]))  # same names, sizes swapped
    with pytest.raises(PictagError, match=r"its row 'img0.jpg' \(3,000 bytes at offset 512\) is 'img0.jpg' \(1,000"):
        open_source(ours, index=build_tar_index(theirs))
    rows = pq.read_table(build_tar_index(ours, tmp_path / "shifted.parquet"))
    shifted = rows.set_column(1, "offset", pa.array(rows["offset"].to_numpy() + 512))
    pq.write_table(shifted, tmp_path / "shifted.parquet")
    with pytest.raises(PictagError, match=r"its row 'img0.jpg' \(1,000 bytes at offset 1,024\) has no tar header"):
        open_source(ours, index=tmp_path / "shifted.parquet")


LONG = "d" * 60 + "/" + "n" * 120  # past the 100 bytes of a header's name field
LONGER = "x/" * 300  # past a whole block of GNU long-name data


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_long_names_are_read_from_gnu_and_pax_headers(tmp_path, fmt):
    names = [f"{LONG}-{i}.jpg" for i in range(3)] + [
        f"{LONGER}y.jpg",
        "short.jpg",
        "caf\u00e9/" + "\u00e9" * 80 + ".jpg",
    ]
    members = {name: name.encode() * 3 for name in names}
    ours = _tar(tmp_path / "a" / "zip1.tar", members, fmt)
    assert {k: v for k, (v, _) in _records(open_source(ours)).items()} == members
    # Another tar whose names differ only past the 100 bytes a header holds: only the long-name headers tell.
    theirs = _tar(
        tmp_path / "b" / "zip1.tar", {name.replace(".jpg", "~.jpg"): data for name, data in members.items()}, fmt
    )
    with pytest.raises(PictagError, match=r"does not belong to zip1.tar: its row 'd{60}/n{120}-0~.jpg'"):
        open_source(ours, index=build_tar_index(theirs))


def test_foreign_index_of_a_remote_tar_is_refused_by_ranged_reads(tmp_path):
    ours = _tar(tmp_path / "a" / "zip1.tar", _members(LONG), tarfile.PAX_FORMAT)
    theirs = _tar(tmp_path / "b" / "zip1.tar", _members(LONG + "~"), tarfile.PAX_FORMAT)
    fs = fsspec.filesystem("memory")
    fs.pipe("/pictag-foreign/zip1.tar", ours.read_bytes())
    fs.pipe("/pictag-foreign/zip1.index.parquet", build_tar_index(theirs).read_bytes())
    fs.pipe("/pictag-foreign/ours.parquet", build_tar_index(ours).read_bytes())
    try:
        with pytest.raises(PictagError, match=r"index memory:///?pictag-foreign/zip1.index.parquet does not belong to"):
            open_source("memory://pictag-foreign/zip1.tar")
        assert len(open_source("memory://pictag-foreign/zip1.tar", index="memory://pictag-foreign/ours.parquet")) == 6
    finally:
        fs.rm("/pictag-foreign", recursive=True)


def test_a_sample_of_rows_spread_over_the_index_is_checked(tmp_path, monkeypatch):
    members = {f"{i:04d}.jpg": b"x" for i in range(100)}
    tar = write_tar(tmp_path / "zip1.tar", members)
    index = build_tar_index(tar)
    checked = []
    member_at = tar_index._member_at
    monkeypatch.setattr(tar_index, "_member_at", lambda blob, offset: checked.append(offset) or member_at(blob, offset))
    open_source(tar, index=index)
    offsets = sorted(offset for offset, _ in _offsets(index).values())
    assert len(checked) == tar_index.SAMPLE_ROWS and checked[0] == offsets[0] and checked[-1] == offsets[-1]
    assert tar_index._spread(5, 32) == [0, 1, 2, 3, 4] and tar_index._spread(1, 32) == [0]
    spread = tar_index._spread(1000, 32)
    assert len(set(spread)) == 32 and spread[0] == 0 and spread[-1] == 999


def test_index_found_beside_that_belongs_to_another_tar_is_replaced(tmp_path):
    tar = _tar(tmp_path / "zip1.tar", _members("img"))
    other = _tar(tmp_path / "other" / "zip1.tar", _members("pic"))
    index = build_tar_index(other, tmp_path / "zip1.index.parquet")
    _rewrite_mtime(index, tar)  # as if it were current: only the headers tell it is not this tar's
    assert sorted(r.key for r in open_source(tar)) == [f"img{i}.jpg" for i in range(6)]


def _rewrite_mtime(index: Path, tar: Path) -> None:
    table = pq.read_table(index)
    meta = {**table.schema.metadata, b"tar_mtime_ns": str(tar.stat().st_mtime_ns).encode()}
    pq.write_table(table.replace_schema_metadata(meta), index)


# 3. Column names of other tools.


def _foreign_index(tmp_path: Path, tar: Path, names: dict[str, str], **extra: list) -> Path:
    rows = pq.read_table(build_tar_index(tar, tmp_path / "ours.parquet"))
    table = pa.table({names[c]: rows[c] for c in ("key", "offset", "size")} | extra)
    pq.write_table(table, tmp_path / "theirs.parquet")
    return tmp_path / "theirs.parquet"


@pytest.mark.parametrize(
    "names",
    [
        ("filename", "start", "length"),
        ("name", "offset_data", "nbytes"),
        ("member", "offset", "size"),
        ("path", "start", "size"),
    ],
)
def test_common_column_names_are_recognised_and_logged(tmp_path, caplog, names):
    members = _members("img")
    tar = _tar(tmp_path / "zip1.tar", members)
    index = _foreign_index(tmp_path, tar, dict(zip(("key", "offset", "size"), names)))
    with caplog.at_level(logging.INFO, logger="pictag.data.tar_index"):
        assert {k: v for k, (v, _) in _records(open_source(tar, index=index)).items()} == members
    key, offset, size = names
    assert f"index {index}: key={key}, offset={offset}, size={size}" in caplog.messages


def test_column_override_wins_and_ambiguous_or_wrong_columns_are_refused(tmp_path):
    tar = _tar(tmp_path / "zip1.tar", _members("img"))
    rows = pq.read_table(build_tar_index(tar, tmp_path / "ours.parquet"))
    paths = pa.array([f"/data/{k}" for k in rows["key"].to_pylist()])
    index = _foreign_index(tmp_path, tar, {"key": "name", "offset": "start", "size": "length"}, path=paths)
    with pytest.raises(
        PictagError, match=r"has two key columns, name and path: pick one with --index-columns key=name"
    ):
        open_source(tar, index=index)
    assert len(open_source(tar, index=index, index_columns="key=name")) == 6
    assert len(open_source(tar, index=index, index_columns=" key = name , offset=start,size=length ")) == 6
    with pytest.raises(PictagError, match=r"does not belong to zip1.tar: its row '/data/img0.jpg'"):
        open_source(tar, index=index, index_columns="key=path")
    with pytest.raises(
        PictagError, match=r"has no column 'file' \(it has name, start, length, path\): fix --index-col"
    ):
        open_source(tar, index=index, index_columns="key=file")
    with pytest.raises(PictagError, match=r"--index-columns 'key:name' is not ROLE=COLUMN pairs"):
        open_source(tar, index=index, index_columns="key:name")
    with pytest.raises(PictagError, match=r"--index-columns 'label=name' is not ROLE=COLUMN"):
        open_source(tar, index=index, index_columns="label=name")
    with pytest.raises(PictagError, match=r"index columns are for a tar's index, but .* is a folder"):
        open_source(tmp_path, index_columns="key=name")
