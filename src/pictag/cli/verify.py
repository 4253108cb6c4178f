"""`pictag verify`: check that an output holds every planned key exactly once and no temporary file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.distributed.options import VerifyConfig

EXAMPLES = """examples:
  pictag verify results.parquet          # a classify output (its plan is kept in results.plan.parquet)
  pictag verify emb/                     # an embedding store
  pictag verify s3://bucket/out.parquet  # outputs on object storage too
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "verify",
        "pictag.distributed.options:VerifyConfig",
        "pictag.cli.verify:run",
        help="check that an output holds every planned image exactly once",
        description="Compare OUT with the plan its run saved: every planned key once (results and errors "
        "together), no part missing or foreign, no temporary file left. Prints the counts; exits 2 when any "
        "of these does not hold.",
        examples=EXAMPLES,
    )


def run(cfg: VerifyConfig):
    """The report when the output holds, else its counts as one error line (exit 2)."""
    from pictag.distributed.verify import verify_output
    from pictag.errors import PictagError

    report = verify_output(cfg.out)
    if not report.ok:
        raise PictagError(" ".join(line.strip() for line in report.summary().splitlines()))
    return report
