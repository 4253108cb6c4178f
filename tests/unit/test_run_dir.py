"""Run directories: what training saves loads back, through `load_run` and `create_model`, equal to what was saved."""

from __future__ import annotations

import json

import pytest
import torch

from pictag.errors import PictagError
from pictag.heads.base import create_head
from pictag.models import create_model
from pictag.models.run_dir import is_run_dir, load_run, read_meta, save_run_model


def _perturb(encoder) -> None:
    # Training moved every weight, and the learned temperature too.
    torch.manual_seed(3)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
        if hasattr(encoder.module, "logit_scale"):
            encoder.module.logit_scale.fill_(2.0)


@pytest.fixture(scope="module")
def open_clip_run(tmp_path_factory, tiny_open_clip):
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu", precision="fp32")
    _perturb(encoder)
    head = create_head("linear", prototypes=torch.randn(3, encoder.embed_dim))
    run = tmp_path_factory.mktemp("runs") / "oc"
    save_run_model(run / "best", encoder, head, task="classifier", classes=["a", "b", "c"], metrics={"top1": 0.5})
    return run, encoder, head


def test_open_clip_run_loads_equal(open_clip_run):
    run, encoder, head = open_clip_run
    assert is_run_dir(run) and is_run_dir(run / "best") and not is_run_dir(run.parent)
    loaded = load_run(run, device="cpu", precision="fp32")
    pixels = torch.randn(2, 3, *encoder.preprocess.size)
    features = encoder.encode_image(pixels).clone()
    assert torch.equal(loaded.encoder.encode_image(pixels), features)
    assert torch.equal(loaded.encoder.encode_text(["a red square"]), encoder.encode_text(["a red square"]))
    with torch.no_grad():
        assert torch.equal(loaded.head(features), head(features))
    assert loaded.classes == ["a", "b", "c"] and loaded.meta["task"] == "classifier"
    assert loaded.encoder.logit_scale == pytest.approx(torch.e**2)  # the learned scale, not the starting one
    assert loaded.encoder.preprocess == encoder.preprocess
    assert loaded.encoder.spec == f"run:{run.resolve()}"
    assert loaded.encoder.weights_id.startswith("run:") and loaded.meta["weights_id"] == encoder.weights_id
    # The same model through the registry, by path or by scheme, from RUN or RUN/best.
    for spec in (str(run), f"run:{run}", str(run / "best")):
        assert create_model(spec, device="cpu").spec == loaded.encoder.spec


def test_files_load_without_pickle(open_clip_run):
    from safetensors.torch import load_file

    run = open_clip_run[0]
    state = load_file(run / "best" / "model.safetensors")
    assert all(k.startswith(("encoder.", "head.")) for k in state)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    meta = json.loads((run / "best" / "pictag.json").read_text())
    assert meta["format"] == 1 and meta["head"]["name"] == "linear" and meta["backbone"] == "open_clip:pictag-tiny"
    assert not list(run.glob(".*"))  # no temporary folder left behind


def test_open_clip_architecture_unknown_to_this_process(open_clip_run, monkeypatch):
    # A fresh process has never registered the tiny architecture: the run carries its config.
    import open_clip.factory

    run = open_clip_run[0]
    builtin = [p for p in open_clip.factory._MODEL_CONFIG_PATHS if "site-packages" in str(p)]
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIG_PATHS", builtin)
    monkeypatch.delitem(open_clip.factory._MODEL_CONFIGS, "pictag-tiny")
    assert load_run(run, device="cpu").encoder.embed_dim == open_clip_run[1].embed_dim


def test_hf_run_is_self_contained(tmp_path, tiny_hf_clip):
    encoder = create_model(f"hf:{tiny_hf_clip}", device="cpu", precision="fp32")
    _perturb(encoder)
    save_run_model(tmp_path / "run" / "best", encoder, None, task="clip", classes=None, metrics={})
    loaded = load_run(tmp_path / "run", device="cpu", precision="fp32")
    pixels = torch.randn(2, 3, *encoder.preprocess.size)
    saved, trained = dict(loaded.encoder.named_parameters()), dict(encoder.named_parameters())
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)
    assert torch.equal(loaded.encoder.encode_image(pixels), encoder.encode_image(pixels))
    # The same weights; the text tower's kernels may differ by an ulp between the two copies (seen: 6e-8).
    torch.testing.assert_close(loaded.encoder.encode_text(["a dog"]), encoder.encode_text(["a dog"]), rtol=0, atol=1e-6)
    assert loaded.head is None and loaded.encoder.logit_scale == pytest.approx(torch.e**2)
    assert (tmp_path / "run" / "best" / "backbone" / "preprocessor_config.json").is_file()


def test_timm_run_and_resave_overwrites(tmp_path):
    encoder = create_model("timm:test_vit", random_weights=True, device="cpu", precision="fp32")
    save_run_model(tmp_path / "run", encoder, None, task="classifier", classes=None, metrics={"epoch": 1})
    _perturb(encoder)
    save_run_model(tmp_path / "run", encoder, None, task="classifier", classes=None, metrics={"epoch": 2})
    assert read_meta(tmp_path / "run")["metrics"] == {"epoch": 2}
    pixels = torch.randn(1, 3, *encoder.preprocess.size)
    assert torch.equal(
        create_model(str(tmp_path / "run"), device="cpu").encode_image(pixels), encoder.encode_image(pixels)
    )


def test_bad_run_directories_are_one_line_errors(tmp_path, open_clip_run):
    (tmp_path / "plain").mkdir()
    with pytest.raises(PictagError, match="not a pictag run"):
        create_model(str(tmp_path / "plain"))
    with pytest.raises(PictagError, match="does not exist"):
        create_model(f"run:{tmp_path / 'missing'}")
    with pytest.raises(PictagError, match="holds its own weights"):
        create_model(str(open_clip_run[0]), random_weights=True)
    # Weights of another architecture under a run's description.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pictag.json").write_text((open_clip_run[0] / "best" / "pictag.json").read_text())
    from safetensors.torch import save_file

    save_file({"encoder.module.nope": torch.zeros(1)}, broken / "model.safetensors")
    with pytest.raises(PictagError, match="does not fit its architecture"):
        load_run(broken)
