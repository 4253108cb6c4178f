"""The generated command line: every option has help, --print-config round-trips, flags override YAML."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import yaml

from pictag.cli.main import COMMANDS, build_parser, main
from pictag.config import field_help, load_config
from pictag.pipeline.options import ClassifyConfig
from pictag.serve.config import ServeConfig
from pictag.store.options import EmbedConfig, SearchConfig


def _configs() -> dict[str, type]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {name: sub.choices[name].get_default("func").args[0] for name in COMMANDS}


def test_every_command_is_generated_from_a_config_whose_every_field_has_help():
    configs = _configs()
    assert set(configs) == set(COMMANDS) and ServeConfig in configs.values()
    for name, config in configs.items():
        helps = field_help(config)
        missing = [f.name for f in dataclasses.fields(config) if not helps.get(f.name)]
        assert not missing, f"pictag {name}: no help for {missing}"


def test_print_config_is_the_resolved_yaml_and_loads_back(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("labels: cat,dog\ntop_k: 2\nbatch_size: 8\n")
    argv = ["classify", "photos/", "--out", "r.PARQUET", "--config", str(tmp_path / "base.yaml"), "--top-k", "3"]
    assert main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["top_k"] == 3 and printed["batch_size"] == 8 and printed["labels"] == "cat,dog"  # flag wins
    assert printed["source"] == "photos/" and printed["unit_size"] == 1000 and printed["resume"] is False
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(printed))
    assert load_config(ClassifyConfig, tmp_path / "resolved.yaml") == load_config(ClassifyConfig, **printed)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "photos/"], "missing --out"),
        (["search"], "missing EMBEDDINGS"),
        (["calibrate", "emb/", "--out", "c.yaml"], "missing --truth"),
        (["classify", "x", "--precision", "fp8"], "invalid choice"),
    ],
)
def test_missing_and_bad_options_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) if message == "invalid choice" else contextlib.nullcontext():
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_names_mean_the_same_in_every_command():
    fields = {config: {f.name for f in dataclasses.fields(config)} for config in _configs().values()}
    assert all("k" not in names for names in fields.values())  # --top-k, not --k
    assert "top_k" in fields[SearchConfig] and "out" in fields[EmbedConfig]
    assert "processes" in fields[ServeConfig]  # uvicorn processes; --workers is data loading everywhere
