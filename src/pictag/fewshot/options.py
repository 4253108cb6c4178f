"""The configs of `pictag fewshot` and `pictag fewshot-eval`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pictag.models.options import ModelOptions
from pictag.pipeline.options import RuntimeOptions


@dataclass(kw_only=True)
class FewshotConfig(RuntimeOptions, ModelOptions):
    """Everything `pictag fewshot` takes.

    Attributes:
        test_dir: Folder of tasks (or one task folder).
        out: Results file, .csv or .parquet.
        method: prototype, tip-adapter, linear-probe, auto (best support accuracy per task), or finetuned (the
            head stored by fewshot-train in --checkpoint).
        templates: Prompt templates for CLIP text prototypes (Tip-Adapter): simple, imagenet80.
        overwrite: Replace an existing output.
    """

    _out: ClassVar[str] = "file"
    _positional: ClassVar[tuple[str, ...]] = ("test_dir",)
    _required: ClassVar[tuple[str, ...]] = ("test_dir", "out")

    test_dir: str | None = None
    out: str | None = None
    method: str = "auto"
    templates: str = "simple"
    overwrite: bool = False


@dataclass(kw_only=True)
class FewshotEvalConfig(RuntimeOptions, ModelOptions):
    """Everything `pictag fewshot-eval` takes.

    Attributes:
        data: Labelled sources: folders of <class>/*.jpg (local, in a tar, or at a URL) or tables with a label
            column; several pool their classes by name.
        ways: Classes per episode.
        shots: Support images per class, comma-separated.
        episodes: Episodes per shot count.
        queries: Query images per class and episode.
        method: all, or comma-separated: prototype,tip-adapter,linear-probe,auto.
        seed: Seed of the episode sampler.
        out: Folder for scores.csv, accuracy.png and config.yaml.
        templates: Prompt templates for CLIP text prototypes (Tip-Adapter).
    """

    _out: ClassVar[str] = "folder"
    _positional: ClassVar[tuple[str, ...]] = ("data",)
    _required: ClassVar[tuple[str, ...]] = ("data",)

    data: list[str] | str | None = None
    ways: int = 5
    shots: list[int] | str = "1,5,16"
    episodes: int = 200
    queries: int = 15
    method: str = "all"
    seed: int = 0
    out: str | None = None
    templates: str = "simple"
