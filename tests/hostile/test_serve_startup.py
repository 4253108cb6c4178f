"""`pictag serve` that cannot start: one line on stderr and exit 2, never a traceback from uvicorn's startup."""

from __future__ import annotations

import socket

import pytest

from pictag.cli.main import main


@pytest.mark.parametrize("port, words", [("99999", "between 1 and 65535"), ("0", "between 1 and 65535")])
def test_a_port_out_of_range(capsys, port, words):
    assert main(["serve", "--port", port]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_a_port_in_use(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "open_clip:ViT-B-32"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err and err.count("\n") == 1


def test_the_default_model_offline(tmp_path, monkeypatch, capsys):
    """No weights in the cache and no network: the model's error, as one line, and the port closed again."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.delenv("PICTAG_MODEL", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", "--port", str(port), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "could not load weights for open_clip:ViT-B-32/openai" in captured.err and captured.err.count("\n") == 1
    assert "pictag serve: http" not in captured.out  # it never claimed to listen
    with socket.create_server(("127.0.0.1", port)):  # and let the port go
        pass
