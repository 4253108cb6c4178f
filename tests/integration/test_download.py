"""`pictag download` on a connected machine, then the same models on an offline one.

The hub is a local HTTP server (tests/hub_server.py) that $HF_ENDPOINT points at: transformers, timm and open_clip
fetch from it through huggingface_hub as they would from the hub. The offline half runs with HF_HUB_OFFLINE=1 and
the endpoint pointing at a closed port.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pyarrow.csv as pacsv
import pytest
import torch
from hub_server import serve

from conftest import subprocess_env
from pictag.cli.main import main
from pictag.errors import PictagError
from pictag.models import create_model, hub

TIMM_TAG = "test_vit.r160_in1k"


@pytest.fixture(scope="module")
def hub_repos(tmp_path_factory, tiny_hf_clip, tiny_open_clip):
    """Three repositories: a transformers CLIP, timm's repository of a tiny ViT's weights, and the weights of an
    open_clip tag (which `_OPEN_CLIP_TAG` registers in the child processes, as open_clip's own tags are)."""
    import shutil

    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("timm-repo")
    torch.manual_seed(3)
    model = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    open_clip_repo = tmp_path_factory.mktemp("open-clip-repo")
    shutil.copy(tiny_open_clip[1], open_clip_repo / "open_clip_pytorch_model.bin")
    return {"acme/tiny-clip": tiny_hf_clip, f"timm/{TIMM_TAG}": folder, "acme/tiny-open-clip": open_clip_repo}


# The tiny open_clip architecture and a weight tag on the hub, registered as open_clip registers its own.
_OPEN_CLIP_TAG = """
import open_clip, open_clip.pretrained
open_clip.add_model_config({config!r})
open_clip.pretrained._PRETRAINED["pictag-tiny"] = {{"acme": open_clip.pretrained._pcfg(hf_hub="acme/tiny-open-clip/")}}
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pictag(commands: list[list[str]], env: dict[str, str], cwd, prelude: str = "") -> subprocess.CompletedProcess:
    """Run pictag commands one after another in one child process (the environment is read at import), stopping
    at the first that fails."""
    script = f"{prelude}\nimport sys\nfrom pictag.cli.main import main\n"
    script += f"sys.exit(next((c for c in {commands!r} if main(c)), 0) and 1)\n"
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def open_clip_tag(tiny_open_clip) -> str:
    return _OPEN_CLIP_TAG.format(config=str(tiny_open_clip[1].parent))


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, hub_repos, open_clip_tag):
    """What the connected machine fetched: its Hugging Face home and a --to folder; the hub's request log."""
    root = tmp_path_factory.mktemp("connected")
    server = serve(hub_repos)
    env = subprocess_env() | {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(root / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    commands = [
        ["download", "--model", "hf:acme/tiny-clip"],
        ["download", "--model", f"timm:{TIMM_TAG}", "--to", "vit"],
        ["download", "--model", "open_clip:pictag-tiny/acme"],
        ["models", "--cached"],
    ]
    try:
        done = _pictag(commands, env, root, open_clip_tag)
        assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
    return root, done.stdout, server.requests


def _offline_env(root) -> dict[str, str]:
    return subprocess_env() | {
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HOME": str(root / "hf"),
    }


def test_download_fetches_from_the_hub_and_lists_the_cache(fetched):
    root, stdout, requests = fetched
    asked = " ".join(requests).replace("1" * 40, "main")
    assert "GET /acme/tiny-clip/resolve/main/model.safetensors" in asked
    assert f"GET /timm/{TIMM_TAG}/resolve/main/model.safetensors" in asked
    listing = [row for row in map(str.split, stdout.splitlines()) if len(row) == 4]  # SPEC SIZE UNIT REPO
    assert {row[0] for row in listing} == {"hf:acme/tiny-clip", f"timm:{TIMM_TAG}", "open_clip:pictag-tiny/acme"}
    assert all(row[2] in ("KB", "MB") for row in listing)
    assert "--model vit loads it offline" in stdout  # the summary says how to use the folder


def test_an_offline_machine_loads_what_was_fetched(fetched, photo_dir, tmp_path, monkeypatch, open_clip_tag):
    root, _, _ = fetched
    env = _offline_env(root)
    by_spec, by_folder = tmp_path / "spec.csv", tmp_path / "folder.csv"
    common = ["--workers", "0"]
    done = _pictag(
        [
            ["classify", str(photo_dir), "--model", f"timm:{TIMM_TAG}", "--head", "pretrained", *common, "--out",
             str(by_spec)],
            ["classify", str(photo_dir), "--model", "hf:acme/tiny-clip", "--labels", "cat,rocket", *common, "--out",
             str(tmp_path / "clip.csv")],
            ["classify", str(photo_dir), "--model", "open_clip:pictag-tiny/acme", "--labels", "cat,rocket", *common,
             "--out", str(tmp_path / "open_clip.csv")],
        ],
        env,
        tmp_path,
        open_clip_tag,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The --to folder is a run directory, its own weights and the model's classifier: it needs no cache at all
    # (this process is offline, and its Hugging Face home is empty).
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    assert main(["classify", str(photo_dir), "--model", str(root / "vit"), *common, "--out", str(by_folder)]) == 0
    ours, theirs = pacsv.read_csv(by_spec).to_pylist(), pacsv.read_csv(by_folder).to_pylist()
    assert [(r["key"], r["label"]) for r in ours] == [(r["key"], r["label"]) for r in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs, strict=True)) <= 1e-6


def test_download_on_an_offline_machine_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hub.hub_online.cache_clear()
    try:
        assert main(["download", "--model", f"timm:{TIMM_TAG}"]) == 2
        error = capsys.readouterr().err.strip()
        assert "does not answer" in error and "--to DIR" in error and "\n" not in error
        assert main(["download", "--model", "timm:no_such_net"]) == 2
        assert "unknown timm model 'no_such_net'" in capsys.readouterr().err
        assert main(["download", "--model", "nonsense"]) == 2 and "must start with" in capsys.readouterr().err
        assert main(["models", "--cached"]) == 0 and "no model weights" in capsys.readouterr().out
        # A Python caller is told the keyword argument, not the flag.
        with pytest.raises(PictagError, match=r"checkpoint=FILE.*pictag\.download\(\)"):
            create_model(f"timm:{TIMM_TAG}")
    finally:
        hub.hub_online.cache_clear()
