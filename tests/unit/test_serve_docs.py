"""docs/serving.md stays true: its serve.yaml examples load, and its reference table lists every option."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pictag.cli.main import main
from pictag.config import load_config
from pictag.serve.config import ServeConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def yaml_examples() -> list[str]:
    return re.findall(r"cat > serve\.yaml <<'EOF'\n(.*?)\nEOF", DOC.read_text(), re.S)


@pytest.mark.parametrize("index", range(2))
def test_serve_yaml_examples_load(tmp_path, monkeypatch, index):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml_examples()[index])
    cfg = load_config(ServeConfig, path)
    monkeypatch.setenv("PICTAG_TOKEN", "t")
    assert cfg.token() in (None, "t")


def test_reference_table_lists_every_option():
    section = DOC.read_text().split("## serve.yaml reference", 1)[1].split("\n## ", 1)[0]
    documented = {name for row in re.findall(r"^\| `([^|]+)` \|", section, re.M) for name in re.findall(r"\w+", row)}
    assert documented == {f.name for f in dataclasses.fields(ServeConfig)}


def test_cli_modes_without_redis_fail_with_one_line(capsys):
    assert main(["serve", "worker", "--model", "open_clip:ViT-B-32"]) == 2
    assert "needs redis_url" in capsys.readouterr().err


def test_cli_rejects_bad_config_values(tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text("batch_size: 0\n")
    assert main(["serve", "api", "--config", str(path)]) == 2
    assert "batch_size must be at least 1" in capsys.readouterr().err


def test_api_processes_are_not_called_workers(capsys):
    # --workers means data-loading workers in every command; the API's uvicorn processes are --processes.
    assert main(["serve", "api", "--processes", "2"]) == 2
    assert "needs redis_url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "api", "--workers", "2"])
    assert "unrecognized arguments: --workers 2" in capsys.readouterr().err
