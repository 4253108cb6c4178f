"""`pictag verify`: check that an output holds every planned key exactly once and no temporary file."""

from __future__ import annotations

from pictag.cli.common import add_command

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
        "pictag.distributed.verify:run",
        help="check that an output holds every planned image exactly once",
        description="Compare OUT with the plan its run saved: every planned key once (results and errors "
        "together), no part missing or foreign, no temporary file left. Prints the counts; exits 2 when any "
        "of these does not hold.",
        examples=EXAMPLES,
    )
