"""What `pictag classify` returns when it writes an output: the job's counts, and the report against the source's
labels when one was asked for. Both classify paths (images, and product tables) return it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pictag.pipeline.job import JobResult

if TYPE_CHECKING:
    from pictag.eval.classification import ClassificationReport


class ClassifyResult(JobResult):
    """A classify job's result; `report` is set when the predictions were scored against the source's labels."""

    report: ClassificationReport | None = None

    @property
    def classified(self) -> int:
        return self.rows

    def summary(self) -> str:
        line = super().summary()
        return f"{line}\n{self.report.summary()}" if self.report else line
