"""`pictag calibrate`: fit a temperature and per-class thresholds so low-confidence predictions become `unknown`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.store.options import CalibrateConfig

EXAMPLES = """examples:
  pictag calibrate emb/ --labels-file labels.txt --truth labelled.csv --out calib.yaml
  pictag calibrate emb/ --labels "cat,dog" --truth labelled.csv --target-precision 0.95 --out calib.yaml
then:
  pictag classify --embeddings emb/ --labels-file labels.txt --calibration calib.yaml --out results.parquet
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "calibrate",
        "pictag.store.options:CalibrateConfig",
        "pictag.cli.calibrate:run",
        help="fit a temperature and per-class thresholds on a small labelled set",
        description="Fit, on the store images listed in a CSV (key,label), the temperature minimising the "
        "negative log-likelihood, and per class the lowest score threshold whose predictions reach the target "
        "precision. Writes OUT (YAML, for classify --calibration), OUT's .coverage.csv table and .coverage.png curve.",
        examples=EXAMPLES,
    )


def run(cfg: CalibrateConfig):
    from pictag.config import options_of
    from pictag.store.calibrate import calibrate

    return calibrate(**options_of(cfg))
