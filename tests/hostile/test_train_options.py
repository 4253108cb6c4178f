"""Training numbers out of range, and fuzzing of the train and splits option groups: every refusal is one line and
exit 2, before any work; the options that take a value are checked where they are declared (`pictag.train.options`)."""

from __future__ import annotations

import contextlib
import io
import itertools
import tempfile
from pathlib import Path

import pytest
from hostile_inputs import one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pictag.cli.main import main
from pictag.config import check_within, group_values
from pictag.errors import PictagError
from pictag.train.options import TrainConfig

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_unique = itertools.count()
# Each example's folder is new to this run: one left by an earlier run that failed must not fail this one.
_FUZZ_ROOT = Path(tempfile.mkdtemp(prefix="pictag-fuzz-"))


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--accumulate", "0", "--accumulate must be at least 1, not 0"),
        ("--label-smoothing", "2", "--label-smoothing must be a finite number in [0, 1), not 2.0"),
        ("--lr", "-1e-3", "--lr must be a finite number in (0, inf), not -0.001"),
        ("--lr", "nan", "--lr must be a finite number in (0, inf), not nan"),
        ("--lr", "inf", "--lr must be a finite number in (0, inf), not inf"),
        ("--lr", "head=1e-3,backbone=-1", "--lr backbone must be a finite number in (0, inf), not -1.0"),
        ("--lr", "head=fast", "--lr 'head=fast': give NAME=NUMBER pairs or one number"),
        ("--weight-decay", "nan", "--weight-decay must be a finite number in [0, inf), not nan"),
        ("--clip-grad", "-1", "--clip-grad must be a finite number in (0, inf), not -1.0"),
        ("--layer-decay", "-1", "--layer-decay must be a finite number in (0, 1], not -1.0"),
        ("--warmup-epochs", "-1", "--warmup-epochs must be a finite number in [0, inf), not -1.0"),
        ("--ema", "1.5", "--ema must be a finite number in [0, 1), not 1.5"),
        ("--folds", "0", "--folds must be at least 2, not 0"),
        ("--folds", "1", "--folds must be at least 2, not 1"),
        ("--val-split", "0", "--val-split must be a finite number in (0, 1), not 0.0"),
        ("--seed", "-1", "--seed must be a finite number in [0, 4294967295], not -1"),
        ("--arcface-m", "nan", "--arcface-m must be a finite number in [0, inf), not nan"),
        ("--log-every", "0", "--log-every 0: give seconds (30s) or optimiser steps (50), above 0"),
        ("--log-every", "nans", "--log-every nans: give seconds (30s) or optimiser steps (50), above 0"),
        ("--logger", "comet", "--logger comet: unknown comet; use csv, tensorboard, mlflow, wandb or none"),
    ],
)
def test_a_training_number_out_of_range_is_one_line_and_exit_2(tmp_path, option, value, says, capsys):
    data = tmp_path / "data"  # the options are refused before the data is even looked at
    task = ["--task", "arcface"] if option.startswith("--arcface") else []  # a task's own options come with it
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *task, f"{option}={value}"]) == 2
    assert says in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--lr", "head=nan", "--lr head must be a finite number in (0, inf), not nan"),
        ("--lr", "backbone=-1", "--lr backbone must be a finite number in (0, inf), not -1.0"),
        ("--label-smoothing", "1", "--label-smoothing must be a finite number in [0, 1), not 1.0"),
        ("--epochs", "0", "--epochs must be at least 1, not 0"),
    ],
)
def test_fewshot_train_numbers_are_checked_too(tmp_path, option, value, says, capsys):
    assert main(["fewshot-train", str(tmp_path / "data"), f"{option}={value}"]) == 2
    assert says in one_line(capsys.readouterr().err)


def test_the_python_api_and_yaml_get_the_same_checks(tmp_path):
    with pytest.raises(PictagError, match=r"--ema must be a finite number in \[0, 1\), not 1.5"):
        TrainConfig(data="d", out="o", ema=1.5)
    config = tmp_path / "train.yaml"
    config.write_text("data: d\nout: o\nlr: {}\n".replace("{}", "-1"))
    assert main(["train", "--config", str(config)]) == 2


def test_the_interval_is_exact_at_its_ends():
    assert check_within(0.0, "[0, 1)", "--x") == 0.0
    for value in (1.0, float("nan"), True, "0.5"):
        with pytest.raises(PictagError):
            check_within(value, "[0, 1)", "--x")
    assert group_values("head=1e-3, backbone = 2e-5", "--lr", "(0, inf)") == {"head": 1e-3, "backbone": 2e-5}
    assert group_values(0.5, "--lr", "(0, inf)") == {None: 0.5}


# What a careless or hostile user types where a number goes.
VALUES = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "1e400", "1e-400", "", " ", "0", "-0", "0x10", "1_000", "head=1", "head=nan"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
TRAIN_NUMBERS = [
    "epochs", "batch-size", "lr", "weight-decay", "layer-decay", "warmup-epochs", "warmup-ratio", "accumulate",
    "clip-grad", "label-smoothing", "patience", "ema", "freeze-epochs", "unfreeze-blocks", "seed", "save-every",
    "val-split", "folds", "fold", "wise-ft", "embed-dim", "subcenters", "classes-per-batch", "samples-per-class",
    "image-size", "arcface-s", "arcface-m", "t0", "t-mult", "workers", "max-pixels", "max-aspect-ratio", "log-every",
]  # fmt: skip


def _assert_refused_in_one_line(command: str, out: str, options: list[tuple[str, str]]) -> None:
    # The data folder does not exist: every option set, valid or not, ends in one line and exit 2 before any work.
    root = _FUZZ_ROOT / f"{command}-{next(_unique)}"
    argv = [command, str(root / "data"), "--out", str(root / out), *(f"--{name}={value}" for name, value in options)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own refusals (a word where an int goes) exit as the CLI does
            code = exit.code
    assert code == 2
    one_line(err.getvalue())
    assert not root.exists()


@FUZZ
@given(
    st.sampled_from(["classifier", "clip", "fusion", "arcface"]),
    st.lists(st.tuples(st.sampled_from(TRAIN_NUMBERS), VALUES), min_size=1, max_size=4),
)
def test_fuzzed_train_options_are_refused_in_one_line(task, options):
    _assert_refused_in_one_line("train", "run", [("task", task), *options])


SPLITS_OPTIONS = ["ratios", "by", "id-pattern", "min-size", "classes", "label-column", "seed"]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(SPLITS_OPTIONS), VALUES), min_size=1, max_size=3))
def test_fuzzed_splits_options_are_refused_in_one_line(options):
    _assert_refused_in_one_line("splits", "splits.csv", options)


def test_a_cross_validated_run_over_missing_data_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "nothing"), "--task", "fusion", "--folds", "2", "--out", str(out)]) == 2
    assert "does not exist" in one_line(capsys.readouterr().err) and not out.exists()


def test_a_value_with_line_breaks_is_quoted_on_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--logger", "csv\nx\u2028y"]) == 2
    assert "--logger csv\\nx\\u2028y: unknown csv\\nx\\u2028y;" in one_line(capsys.readouterr().err)
