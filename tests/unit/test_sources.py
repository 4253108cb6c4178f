"""Sources: every kind of URI opens to the same records, shards partition them, and bad input says what to do."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import write_tar
from pictag.data import Record, _io, build_tar_index, open_source, tar_index
from pictag.data._patterns import expand_braces
from pictag.errors import PictagError


def _image(fmt: str, color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, fmt)
    return buf.getvalue()


JPEG, PNG = _image("JPEG", "red"), _image("PNG", "blue")
# Images, a zero-byte image and a member that is not an image (left out of the index).
MEMBERS = {"a.jpg": JPEG, "sub/b.PNG": PNG, "sub/empty.jpg": b"", "labels.txt": b"not an image"}
IMAGES = {k: v for k, v in MEMBERS.items() if k != "labels.txt"}


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _records(source) -> dict[str, Record]:
    records = {r.key: r for r in source}
    assert len(records) == len(source)
    return records


def _data(source) -> dict[str, bytes | None]:
    return {key: r.data for key, r in _records(source).items()}


def test_folder_is_recursive_sorted_and_keyed_by_relative_path(tmp_path):
    root = _folder(tmp_path / "photos", {"b/c/x.JPG": JPEG, "a.png": PNG, "notes.txt": b"x", "b/y.webp": b"w"})
    source = open_source(root)
    assert [r.key for r in source] == ["a.png", "b/c/x.JPG", "b/y.webp"]
    assert _data(source)["b/c/x.JPG"] == JPEG


def test_single_image_file_is_keyed_by_its_name(tmp_path):
    path = _folder(tmp_path, {"cat.jpg": JPEG}) / "cat.jpg"
    assert _data(open_source(str(path))) == {"cat.jpg": JPEG}


def test_index_reads_headers_only_and_records_equal_tar_members(tmp_path):
    big = b"\0" * (16 << 20)
    tar = write_tar(tmp_path / "zip1.tar", {"big.bin": big, **MEMBERS, "late.jpg": JPEG})
    io_stats = Path("/proc/self/io")
    before = int(io_stats.read_text().split()[1]) if io_stats.exists() else None
    out = build_tar_index(tar)
    if before is not None:  # rchar: bytes this process read; the 16 MB member must have been skipped
        assert int(io_stats.read_text().split()[1]) - before < 1 << 20
    assert out == tmp_path / "zip1.index.parquet"
    table = pq.read_table(out)
    assert table.column_names == ["key", "offset", "size"]
    assert table.schema.metadata[b"tar_name"] == b"zip1.tar"
    assert int(table.schema.metadata[b"tar_size"]) == tar.stat().st_size
    with tarfile.open(tar) as archive:
        expected = {m.name: archive.extractfile(m).read() for m in archive if m.name.endswith((".jpg", ".PNG"))}
    assert _data(open_source(tar, index=out)) == expected
    assert set(expected) == {*IMAGES, "late.jpg"}


def _rewrite_index(path: Path, **metadata: str) -> None:
    table = pq.read_table(path)
    updates = {k.encode(): v.encode() for k, v in metadata.items()}
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **updates}), path)


def test_index_recorded_without_tar_suffix_matches_by_stem(tmp_path):
    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    index = build_tar_index(tar, tmp_path / "custom.parquet")
    _rewrite_index(index, tar_name="zip1")
    assert _data(open_source(tar, index=index)) == IMAGES
    _rewrite_index(index, tar_name="zip2.tar")
    with pytest.raises(PictagError, match=r"was built for zip2.tar, not zip1.tar: rebuild it with `pictag index"):
        open_source(tar, index=index)


def test_index_pointing_only_past_the_end_is_refused(tmp_path):
    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    index = tmp_path / "foreign.parquet"  # no metadata, as other tools write it: offsets are still checked
    pq.write_table(pa.table({"key": ["a.jpg"], "offset": [tar.stat().st_size], "size": [10]}), index)
    with pytest.raises(PictagError, match=r"does not belong to zip1.tar: none of the rows checked lies inside"):
        open_source(tar, index=index)


def test_index_without_a_column_or_not_parquet_is_refused(tmp_path):
    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    pq.write_table(pa.table({"key": ["a.jpg"], "start": [0]}), tmp_path / "cols.parquet")
    with pytest.raises(PictagError, match=r"has no size column \(size or length or nbytes; it has key, start\)"):
        open_source(tar, index=tmp_path / "cols.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(PictagError, match=r"cannot read index .*junk.parquet as Parquet"):
        open_source(tar, index=tmp_path / "junk.parquet")


def test_tar_shrinking_after_open_gives_error_records(tmp_path):
    tar = write_tar(tmp_path / "zip1.tar", {"a.jpg": JPEG, "z.jpg": PNG})
    source = open_source(tar)
    os.truncate(tar, 2048)  # keeps a.jpg's bytes (512 to 1145), cuts z.jpg's (from 2048)
    records = _records(source)
    assert records["a.jpg"].data == JPEG
    assert records["z.jpg"].data is None
    assert records["z.jpg"].error == "offset past the end of zip1.tar (truncated copy?)"
    os.remove(tar)
    assert all(r.data is None and "No such file" in r.error for r in source)


def test_tar_without_index_builds_it_once_beside_and_reuses_it(tmp_path, monkeypatch):
    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    assert _data(open_source(tar)) == IMAGES
    index = tmp_path / "zip1.index.parquet"
    built = index.stat().st_mtime_ns

    def no_scan(tar):
        raise AssertionError("the cached index should have been reused")

    monkeypatch.setattr(tar_index, "_scan", no_scan)
    assert _data(open_source(tar)) == IMAGES
    assert index.stat().st_mtime_ns == built


def test_tar_without_index_caches_it_in_user_cache_when_beside_is_not_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("PICTAG_CACHE", str(tmp_path / "cache"))
    tar = write_tar(tmp_path / "data" / "zip1.tar", MEMBERS)
    (tmp_path / "data" / "zip1.index.parquet").mkdir()  # something that is not an index stands in the way
    assert _data(open_source(tar)) == IMAGES
    [cached] = (tmp_path / "cache" / "tar-index").iterdir()
    assert cached.name.startswith("zip1-") and cached.name.endswith(".index.parquet")
    monkeypatch.setattr(tar_index, "_scan", lambda tar: pytest.fail("rebuilt"))
    assert _data(open_source(tar)) == IMAGES


def test_stale_index_beside_is_rebuilt(tmp_path):
    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    open_source(tar)
    write_tar(tar, {"new.jpg": JPEG})  # same size as before (tars pad to 10 KiB): only its mtime tells
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 10**9))
    assert _data(open_source(tar)) == {"new.jpg": JPEG}


def test_brace_patterns_expand_to_tars_keyed_by_stem(tmp_path):
    for i in range(3):
        write_tar(tmp_path / "shards" / f"{i:06d}.tar", {f"img{i}.jpg": JPEG, "labels.txt": b"x"})
    expected = {f"{i:06d}/img{i}.jpg": JPEG for i in range(3)}
    assert _data(open_source(f"{tmp_path}/shards/{{000000..000002}}.tar")) == expected
    assert _data(open_source(f"{tmp_path}/shards/*.tar")) == expected
    assert list(_data(open_source(f"{tmp_path}/shards/{{000002,000000}}.tar"))) == [
        "000002/img2.jpg",
        "000000/img0.jpg",
    ]
    assert _data(open_source(f"{tmp_path}/shards/{{000001..000001}}.tar")) == {"img1.jpg": JPEG}
    with pytest.raises(PictagError, match=r"shards/000003.tar does not exist"):
        open_source(f"{tmp_path}/shards/{{000000..000009}}.tar")


def test_expand_braces_keeps_padding_and_order():
    assert expand_braces("s-{008..011}-{a,b}.tar") == [
        f"s-{n}-{x}.tar" for n in ("008", "009", "010", "011") for x in "ab"
    ]
    assert expand_braces("{9..10}") == ["9", "10"]
    with pytest.raises(PictagError, match="rising numeric range"):
        expand_braces("{a..c}")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_paths_are_relative_to_the_table_and_missing_files_are_error_records(tmp_path, suffix):
    _folder(tmp_path / "imgs", {"a.jpg": JPEG, "b.png": PNG})
    absolute = str(_folder(tmp_path / "elsewhere", {"c.jpg": JPEG}) / "c.jpg")
    table = pa.table({"label": ["x", "y", "z", "w"], "file": ["imgs/a.jpg", "imgs/b.png", absolute, "imgs/gone.jpg"]})
    path = tmp_path / f"list{suffix}"
    pv.write_csv(table, path) if suffix == ".csv" else pq.write_table(table, path)
    records = _records(open_source(path, path_column="file"))
    assert {k: r.data for k, r in records.items() if r.error is None} == {
        "imgs/a.jpg": JPEG,
        "imgs/b.png": PNG,
        absolute: JPEG,
    }
    assert records["imgs/gone.jpg"].data is None and "No such file" in records["imgs/gone.jpg"].error
    with pytest.raises(PictagError, match=r"has no column 'path' \(it has label, file\): name the column"):
        open_source(path)


def _spy_ranges(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    memory = fsspec.get_filesystem_class("memory")
    cat_file = memory.cat_file

    def spy(self, path, start=None, end=None, **kwargs):
        calls.append((path, start, end))
        return cat_file(self, path, start, end, **kwargs)

    monkeypatch.setattr(memory, "cat_file", spy)
    return calls


def test_memory_url_folder_and_tar_with_index_read_by_range(tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    for name, data in {"imgs/a.jpg": JPEG, "imgs/deep/b.png": PNG, "imgs/x.txt": b"x"}.items():
        fs.pipe(f"/pictag-test/{name}", data)
    assert _data(open_source("memory://pictag-test/imgs")) == {"a.jpg": JPEG, "deep/b.png": PNG}

    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    fs.pipe("/pictag-test/zip1.tar", tar.read_bytes())
    fs.pipe("/pictag-test/idx.parquet", build_tar_index(tar).read_bytes())
    calls = _spy_ranges(monkeypatch)
    source = open_source("memory://pictag-test/zip1.tar", index="memory://pictag-test/idx.parquet")
    assert len(calls) == len(IMAGES)  # opening reads the header before each sampled row (here every row)
    calls.clear()
    assert _data(source) == IMAGES
    tar_reads = [c for c in calls if c[0].endswith("zip1.tar")]
    assert len(tar_reads) == len(IMAGES) and all(start is not None and end is not None for _, start, end in tar_reads)
    with pytest.raises(PictagError, match=r"has no index at memory://.*zip1.index.parquet: build one"):
        open_source("memory://pictag-test/zip1.tar")
    fs.rm("/pictag-test", recursive=True)


def test_file_url_folder_andwrite_tar(tmp_path):
    _folder(tmp_path / "imgs", {"a.jpg": JPEG})
    assert _data(open_source(f"file://{tmp_path}/imgs")) == {"a.jpg": JPEG}
    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    assert _data(open_source(f"file://{tar}", index=f"file://{build_tar_index(tar)}")) == IMAGES


def test_skipped_keys_are_neither_yielded_nor_read(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", {"a.jpg": JPEG, "b.png": PNG, "c.jpg": JPEG})
    tar = write_tar(tmp_path / "zip1.tar", MEMBERS)
    reads = []
    read = _io.Blob.read
    monkeypatch.setattr(_io.Blob, "read", lambda self, *a: reads.append(a) or read(self, *a))
    for source, skip in [(open_source(root), {"b.png"}), (open_source(tar), {"a.jpg", "sub/empty.jpg"})]:
        expected = [r.key for r in source if r.key not in skip]
        reads.clear()
        keys = [r.key for shard in source.shards() for r in shard.read(skip=skip)]
        assert keys == expected and len(reads) == len(source) - len(skip)


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_shards_partition_records_and_pickle(tmp_path, kind):
    files = {f"{i // 100}/{i:04d}.jpg": i.to_bytes(2, "big") for i in range(1100)}
    uri = _folder(tmp_path / "imgs", files) if kind == "folder" else write_tar(tmp_path / "zip1.tar", files)
    source = open_source(uri)
    shards = source.shards()
    assert 2 <= len(shards) <= 8 and len(source) == sum(map(len, shards)) == len(files)
    per_shard = [[r.key for r in pickle.loads(pickle.dumps(shard)).read()] for shard in shards]
    keys = [k for part in per_shard for k in part]
    assert sorted(keys) == sorted(files) and len(set(keys)) == len(keys)
    assert all(len(pickle.dumps(shard)) < 64 << 10 for shard in shards)
    assert _data(source) == files


def test_clear_errors_for_bad_input(tmp_path):
    cases = {
        str(tmp_path / "nope"): r"nope does not exist: check the path",
        str(_folder(tmp_path / "empty", {"readme.txt": b"x"})): r"holds no images \(.bmp, .gif",
        str(_folder(tmp_path, {"notes.docx": b"x"}) / "notes.docx"): r"cannot open .*notes.docx: give a folder",
        "nosuchprotocol://x/y": r"cannot open nosuchprotocol://x/y",
    }
    for uri, message in cases.items():
        with pytest.raises(PictagError, match=message):
            open_source(uri)
    with pytest.raises(PictagError, match=r"an index is for a tar, but .* is a folder"):
        open_source(tmp_path / "empty", index=tmp_path / "x.parquet")


def test_compressed_tar_is_refused_with_the_command_that_fixes_it(tmp_path):
    with tarfile.open(tmp_path / "zip1.tar.gz", "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("a.jpg"), io.BytesIO(b""))
    with pytest.raises(PictagError, match=r"zip1.tar.gz is gzip-compressed.*\(`gunzip -k .*zip1.tar.gz`\)"):
        open_source(tmp_path / "zip1.tar.gz")
    os.rename(tmp_path / "zip1.tar.gz", tmp_path / "zip1.tar")  # compressed, whatever its name says
    with pytest.raises(PictagError, match=r"zip1.tar is gzip-compressed"):
        open_source(tmp_path / "zip1.tar")
