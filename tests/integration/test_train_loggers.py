"""`pictag train --logger csv,tensorboard,mlflow,wandb`: one tiny run read back through each tracker's own reader
(MLflow's file store through its client, W&B in offline mode, TensorBoard's event reader, the CSV), and the
progress lines a log that is not a terminal gets within an epoch."""

from __future__ import annotations

import contextlib
import csv
import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewshot_data import write_class_folders  # noqa: E402

from conftest import TINY
from pictag.cli.main import main  # noqa: E402

FAST = [*TINY, "--image-size", "32", "--batch-size", "2", "--warmup-epochs", "0", "--epochs", "2"]
STEPS = 2 * 3  # 6 training images of batch 2, two epochs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loggers")
    data = write_class_folders(root / "data", per_class=4)
    out = root / "run"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use its file store
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    log = root / "stderr.log"  # a file, as a redirected log: not a terminal
    with open(log, "w") as err, contextlib.redirect_stderr(err):
        code = main(["train", str(data), "--out", str(out), "--val-split", "0.5", *FAST,
                     "--logger", "csv,tensorboard,mlflow,wandb", "--log-every", "1"])  # fmt: skip
    patch.undo()
    assert code == 0, log.read_text()
    return out, root, log.read_text()


def test_progress_lines_come_every_step_when_stderr_is_a_file(run):
    _, _, err = run
    lines = [line for line in err.splitlines() if line.startswith("epoch 1/2: batch ")]
    assert [line.split()[3] for line in lines] == ["1/3", "2/3"], err  # the last batch's line is the epoch's own
    assert "img/s" in lines[0] and "s left in the epoch" in lines[0]


def test_mlflow_file_store_holds_every_step_and_epoch(run):
    from mlflow import MlflowClient

    out, root, _ = run
    client = MlflowClient((root / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("pictag").experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert len(client.get_metric_history(found.info.run_id, "train/loss")) == STEPS
    top1 = client.get_metric_history(found.info.run_id, "val_top1")
    # epoch 0, the head stage's model, at step 0; each epoch at the step it ended on
    assert [m.step for m in top1] == [0, 3, 6]
    assert [m.value for m in client.get_metric_history(found.info.run_id, "epoch")] == [0.0, 1.0, 2.0]
    assert found.data.params["epochs"] == "2" and found.data.params["model"] == "timm:test_efficientnet_gn"


def test_wandb_offline_run_holds_every_step_and_epoch(run):
    out, _, _ = run
    (folder,) = (out / "wandb").glob("offline-run-*")
    (records,) = folder.glob("run-*.wandb")
    history = _wandb_history(records)
    assert sum(1 for row in history if "train/loss" in row) == STEPS
    epochs = [row for row in history if "epoch" in row]
    assert [(row["epoch"], row["trainer/global_step"]) for row in epochs] == [(0, 0), (1, 3), (2, 6)]
    assert all("val_top1" in row for row in epochs) and all("lr_head" in row for row in epochs[1:])


def _wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline W&B run file: LevelDB's log format (32 KiB blocks of crc32, length, type
    records, after a 7-byte ":W&B" header) around wandb's protobuf records; wandb no longer ships a reader."""
    from wandb.proto import wandb_internal_pb2

    raw, block, position, pending, rows = path.read_bytes(), 32768, 7, b"", []
    assert raw.startswith(b":W&B")
    while position + 7 <= len(raw):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length, kind) == (0, 0):  # the block's padding
            position += left
            continue
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def test_tensorboard_and_csv_hold_steps_and_epochs(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = run
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == STEPS
    assert [e.step for e in events.Scalars("val_top1")] == [0, 3, 6]
    with open(out / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(1 for r in rows if r["train/loss"]) == STEPS
    assert [r["epoch"] for r in rows if r["epoch"]] == ["0", "1", "2"]
