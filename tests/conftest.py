"""Shared fixtures: tiny random CLIP models built from config (open_clip and transformers), real photos, tars."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression
from PIL import Image

from pictag.testing import save_random_hf_clip, save_random_open_clip

ROOT = Path(__file__).resolve().parents[1]
# pytest keeps each test module's assertion rewrite as bytecode beside it, and Python pictag's compiled modules:
# where PYTHONDONTWRITEBYTECODE is set, every run parses and rewrites all of them again (0.7 s of `-m unit`).
sys.dont_write_bytecode = False
# Every test is marked by the folder it is in (`pytest -m unit` runs the fast ones), registered in pyproject.toml.
KINDS = ("unit", "integration", "e2e", "hostile")

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

# The CLI options of a tiny random timm model on the CPU, decoded in the test's own process.
TINY = ["--model", "timm:test_efficientnet_gn", "--random-weights", "--workers", "0", "--device", "cpu"]


def pytest_ignore_collect(collection_path, config):
    # `-m unit` (any -m of the folder markers alone) does not import the other folders' modules: their imports (Ray,
    # Playwright, moto, schemathesis ...) cost more than many of the unit tests. Other expressions collect everything.
    expression = config.getoption("markexpr")
    if not expression or collection_path.parent != ROOT / "tests" or collection_path.name not in KINDS:
        return None
    names = set(re.findall(r"[^\s()]+", expression)) - {"and", "or", "not"}
    kind = collection_path.name
    if names <= set(KINDS) and not Expression.compile(expression).evaluate(lambda name, **_: name == kind):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        kind = item.path.relative_to(ROOT / "tests").parts[0]
        if kind not in KINDS:
            raise pytest.UsageError(
                f"{item.nodeid} is not in tests/unit, tests/integration or tests/e2e: move it there"
            )
        item.add_marker(kind)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Prototype and index caches must never leak between tests or into the user's home.
    monkeypatch.setenv("PICTAG_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test process runs torch on one thread: its models and batches are tiny, so a second thread only adds
    synchronisation, and more threads than free cores makes a step many times slower. Processes that tests start
    keep their own defaults."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _exact_precision():
    # An unset precision means "auto", which is bf16 on CPUs with native bf16: tests compare numbers against
    # references and between code paths, so they run in fp32 on every CPU unless they ask for a precision.
    # Session-wide, so that module-scoped fixtures (built before any function-scoped one) get it too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PICTAG_PRECISION", "fp32")
        yield


def photos() -> dict[str, Image.Image]:
    """scikit-image's bundled real photos, as RGB PIL images (copies: a caller may change its own)."""
    return {name: img.copy() for name, img in _decoded_photos().items()}


@functools.cache
def _decoded_photos() -> dict[str, Image.Image]:
    # Decoding the PNGs takes 20 times longer than copying the pixels, and many tests ask for them.
    import skimage.data

    names = ["astronaut", "chelsea", "coffee", "rocket", "camera"]
    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names}


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Real photos as JPEGs, shortest side 300 px: below 2×224, so DCT downscaling never applies."""
    folder = tmp_path_factory.mktemp("photos")
    for name, img in photos().items():
        scale = 300 / min(img.size)
        img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC).save(folder / f"{name}.jpg")
    return folder


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory) -> tuple[str, Path]:
    """A registered tiny open_clip architecture and a checkpoint of random weights: (spec, checkpoint)."""
    checkpoint = save_random_open_clip(tmp_path_factory.mktemp("open_clip"), "pictag-tiny", TINY_OPEN_CLIP, seed=1)
    return "open_clip:pictag-tiny", checkpoint


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory) -> Path:
    """A tiny transformers CLIP saved with save_pretrained (load it as `hf:<dir>`, in any process)."""
    return save_random_hf_clip(tmp_path_factory.mktemp("hf_clip"), seed=2)


@pytest.fixture
def memory_url():
    """A store's folder on fsspec's in-memory file system (object storage, seen by this process only), removed after."""
    import fsspec

    root = f"pictag-{uuid.uuid4().hex[:8]}"
    yield f"memory://{root}/emb"
    fsspec.filesystem("memory").rm(f"/{root}", recursive=True)


@pytest.fixture(scope="session")
def s3():
    """A bucket on an S3 server on localhost (moto's, over HTTP): its URL, "s3://pictag-test".

    The endpoint and credentials go to the environment, where s3fs (through botocore) reads them, as it reads a real
    cluster's; processes started afterwards (a Ray cluster's actors, `pictag` subprocesses) inherit them.
    """
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import fsspec

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "pictag",
        "AWS_SECRET_ACCESS_KEY": "pictag",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    fsspec.filesystem("s3").mkdir("pictag-test")
    yield "s3://pictag-test"
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def upload(folder: Path, url: str) -> str:
    """Copy the files of a local folder to an fsspec URL, one by one (a store copied to object storage)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for path in folder.iterdir():
        fs.pipe_file(f"{root}/{path.name}", path.read_bytes())
    return url


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for running `python -m pictag` from this checkout in a child process.

    The child runs torch on one thread, as the test process does: a run killed in a child and resumed equals one run
    here to the last bit, and a child does not fight the test process and its own workers for the cores.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# The watcher of `killed_once_written`: python -c KILL PATH PGID SECONDS, exit status 1 if PATH never came.
_KILL_ONCE_WRITTEN = """import os, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while not os.path.exists(sys.argv[1]):
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.02)
os.killpg(int(sys.argv[2]), 9)
"""


@contextlib.contextmanager
def killed_once_written(command: list[str], env: dict[str, str], path: Path, seconds: float = 120):
    """Run `command` in a process group of its own and kill -9 the whole group as soon as `path` exists.

    The `with` block runs while the command does, and its end waits for the kill: a test computes its uninterrupted
    run there, on the second core, instead of after the kill. A process of its own watches for `path` (a thread
    would wait for the GIL while the block trains), so the kill is as prompt as with nothing else running.
    """
    proc = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    watcher = subprocess.Popen([sys.executable, "-c", _KILL_ONCE_WRITTEN, str(path), str(proc.pid), str(seconds)])
    try:
        yield
        while watcher.poll() is None:
            if proc.poll() is not None:  # killed this instant, or ended before writing `path`
                with contextlib.suppress(subprocess.TimeoutExpired):
                    watcher.wait(timeout=2)
                assert watcher.returncode == 0, f"ended before writing {path.name}: {proc.stderr.read()}"
            time.sleep(0.02)
        assert watcher.returncode == 0, f"no {path.name} within {seconds:.0f} s"
    finally:
        watcher.kill()
        with contextlib.suppress(ProcessLookupError):  # killed already, unless the test failed first
            os.killpg(proc.pid, signal.SIGKILL)
        watcher.wait()
        proc.wait(timeout=30)


def tar_source(tmp_path, n=30, bad=("broken.jpg",)):
    """A tar of n small JPEGs and the given broken members, opened: (source, members)."""
    members = {f"{i:04d}.jpg": jpeg_bytes(Image.new("RGB", (32, 24), (i, i, i))) for i in range(n)}
    members.update({name: b"\xff\xd8 nope" for name in bad})
    from pictag.data import open_source

    return open_source(write_tar(tmp_path / "t.tar", members)), members
