"""The generated command line: every option has help, --print-config round-trips, flags override YAML."""

from __future__ import annotations

import contextlib
import dataclasses
import re

import pytest
import yaml

from pictag.cli.main import COMMANDS, build_parser, main
from pictag.config import field_help, load_config
from pictag.pipeline.options import ClassifyConfig
from pictag.serve.config import ServeConfig
from pictag.store.options import EmbedConfig, SearchConfig
from pictag.train.options import train_config


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
        if "out" in helps:
            assert getattr(config, "_out", None) in ("file", "folder", "file or folder"), f"pictag {name}: _out"


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


@pytest.mark.parametrize(
    ("task", "own", "others"),
    [
        ("classifier", "--head", ("--text-model", "--arcface-m", "--wise-ft")),
        ("clip", "--wise-ft", ("--head", "--text-model", "--arcface-m")),
        ("fusion", "--text-model", ("--head", "--arcface-m", "--wise-ft")),
        ("arcface", "--arcface-m", ("--head", "--text-model", "--images")),
    ],
)
def test_train_help_lists_the_shared_options_and_the_task_s_own(task, own, others, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--task", task, "--help"])
    out = capsys.readouterr().out
    assert "--epochs" in out and "--lr" in out and f"{task} task:" in out and own in out
    assert not [option for option in others if re.search(rf"^ +{option}\b", out, flags=re.M)]


def test_train_help_without_a_task_says_how_to_see_a_task_s_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--head" in out and "--arcface-m" not in out and "--task fusion --help" in " ".join(out.split())


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--embed-dim", "8"], "--embed-dim is an option of --task arcface"),
        (["--task", "arcface", "--images=img/"], "--images is an option of --task fusion"),
    ],
)
def test_an_option_of_another_task_is_named_in_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "data/", "--out", "run", *argv])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"pictag train: error: {line} (see pictag train --help)\n"


def test_a_yaml_task_takes_its_own_options_and_refuses_another_task_s(tmp_path, capsys):
    config = tmp_path / "fusion.yaml"
    config.write_text("task: fusion\nimages: imgs/\ntext_model: hf:x\n")
    assert main(["train", "data/", "--out", "run", "--config", str(config), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["text_model"] == "hf:x" and printed["images"] == "imgs/" and "arcface_m" not in printed
    config.write_text("task: fusion\narcface_m: 0.2\n")
    assert main(["train", "data/", "--out", "run", "--config", str(config)]) == 2
    assert "unknown option(s) arcface_m" in capsys.readouterr().err


def test_a_config_written_before_tasks_had_their_own_options_still_loads(tmp_path):
    from pictag.train.options import TASK_OPTIONS, ArcfaceConfig, train_config

    every_task = {f.name: f.default for options in TASK_OPTIONS.values() for f in dataclasses.fields(options)}
    old = tmp_path / "config.yaml"
    former = dict.fromkeys(["id_col", "label_col", "text_cols", "text_column"])  # unset, as a resolved config has them
    old.write_text(
        yaml.safe_dump({**every_task, **former, "data": "d", "out": "o", "task": "arcface", "embed_dim": 64})
    )
    cfg = load_config(train_config("arcface"), old)
    assert isinstance(cfg, ArcfaceConfig) and cfg.embed_dim == 64 and not hasattr(cfg, "text_model")


@pytest.mark.parametrize(
    ("argv", "resolved", "warning"),
    [
        (["train", "d/", "--out", "r", "--text-column", "caption"], {"text_columns": "caption"}, "--text-column is"),
        (
            ["train", "d/", "--out", "r", "--task", "fusion", "--label-col", "cls"],
            {"label_column": "cls"},
            "--label-col is",
        ),
        (["train", "d/", "--out", "r", "--label-col", "cls"], {"label_column": "cls"}, "--label-col is deprecated"),
        (["train", "d/", "--out", "r", "--text-cols", "t"], {"text_columns": "t"}, "--text-cols is deprecated"),
        (["classify", "t.csv", "--id-col", "sku"], {"id_column": "sku"}, "--id-col is deprecated: use --id-column"),
        (["fewshot-train", "--train-data", "d/", "--val-data", "v/"], {"data": "d/", "val": "v/"}, "--val-data is"),
        (["fewshot-train", "d/", "--lr-head", "1e-3"], {"lr": "head=1e-3"}, "--lr-head is deprecated: use --lr head="),
        (
            ["evaluate", "runs/a", "--data", "v/"],
            {"model": "runs/a"},
            "the positional MODEL is deprecated: use --model",
        ),
        (
            ["export", "runs/a", "--format", "hf", "--out", "x/"],
            {"model": "runs/a"},
            "the positional RUN is deprecated: use --model",
        ),
        (["download", "timm:resnet18"], {"model": "timm:resnet18"}, "the positional SPEC is deprecated: use --model"),
    ],
)
def test_a_former_spelling_still_works_warns_once_and_is_not_in_help(argv, resolved, warning, capsys, monkeypatch):
    import pictag.config

    monkeypatch.setattr(pictag.config, "_warned", set())
    for _ in range(2):
        assert main([*argv, "--print-config"]) == 0
    captured = capsys.readouterr()
    printed = yaml.safe_load(captured.out[: len(captured.out) // 2])  # the same config, printed twice
    assert {k: printed[k] for k in resolved} == resolved
    lines = captured.err.strip().splitlines()
    assert captured.err.count(warning) == 1 and len(set(lines)) == len(lines)  # each spelling warns once
    with pytest.raises(SystemExit):
        main([argv[0], "--help"])
    flag = warning.split()[0] if warning.startswith("--") else None
    assert flag is None or not re.search(rf"^ +{flag}\b", capsys.readouterr().out, flags=re.M)


def test_a_former_yaml_key_still_works_and_warns(tmp_path, capsys, monkeypatch):
    import pictag.config

    monkeypatch.setattr(pictag.config, "_warned", set())
    (tmp_path / "old.yaml").write_text("data: d\nout: o\ntask: fusion\ntext_cols: title,description\n")
    cfg = load_config(train_config("fusion"), tmp_path / "old.yaml")
    assert cfg.text_columns == "title,description"
    assert "text_cols is deprecated: use text_columns" in capsys.readouterr().err


def test_docs_cli_md_is_generated_from_the_configs_and_current():
    from pictag.cli.docs import REGENERATE
    from pictag.cli.docs import main as docs

    assert docs(["--check"]) == 0, f"docs/cli.md is not current: regenerate it with `{REGENERATE}`"
