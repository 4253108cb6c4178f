"""`pictag splits`: train/val/test splits that keep every image of one object (its ID) in one split."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.cli.common import add_command

if TYPE_CHECKING:
    from pictag.data.options import SplitsConfig

EXAMPLES = """examples:
  pictag splits data/ --out splits.csv --ratios 0.7,0.15,0.15 --min-size 224
  pictag splits data/ --out splits.csv --id-pattern '^(?P<id>[A-Z0-9]+)-' --classes shoes,bags
  pictag splits coil100/ --out splits.csv --by class          # open set: test objects are never trained on
then:
  pictag train data/ --splits splits.csv ...
  pictag evaluate --model RUN --splits splits.csv --query test --gallery train,val --recall-at 1,5
"""


def add_parser(sub) -> None:
    add_command(
        sub,
        "splits",
        "pictag.data.options:SplitsConfig",
        "pictag.cli.splits:run",
        help="split a labelled set into train/val/test, each object (ID) in one split",
        description="Group the images of each class by the ID in their file names ({ID}_{seq}.jpg), deal whole "
        "IDs into train, val and test to meet the ratios per class, and write OUT, a CSV of path,class,id,split. "
        "Prints a per-class table and what was left out. Seeded: a rerun writes the same splits.",
        examples=EXAMPLES,
    )


def run(cfg: SplitsConfig):
    from pictag.config import options_of
    from pictag.data.splits import write_splits

    return write_splits(**options_of(cfg))
