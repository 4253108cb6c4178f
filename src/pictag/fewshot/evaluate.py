"""Episodic evaluation: mean accuracy and 95% confidence interval of each method over sampled N-way K-shot tasks."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pictag.config import dump_config, load_config
from pictag.data.sources import open_source
from pictag.device import default_workers
from pictag.errors import PictagError
from pictag.eval.plots import save_figure
from pictag.fewshot.options import FewshotEvalConfig
from pictag.fewshot.tasks import sample_episodes
from pictag.heads.auto import CANDIDATES, AutoHead
from pictag.heads.base import FEW_SHOT, check_head, create_head, list_heads
from pictag.heads.zero_shot import ZeroShotClassifier
from pictag.models.base import Encoder
from pictag.models.build import build_encoder
from pictag.pipeline.runner import embed_all
from pictag.storage.files import atomic_file


@dataclass
class MethodScore:
    """How one method did on one shot count.

    Attributes:
        method: Head name.
        shots: Support examples per class.
        ways: Classes per episode.
        episodes: Episodes evaluated.
        accuracy: Mean query accuracy over episodes, in percent.
        ci95: Half-width of the 95% confidence interval of the mean, in percent (1.96 · std / √episodes).
        seconds_per_task: Mean seconds to fit the head and predict the queries of one episode, on cached features.
        chosen: For `auto`, how often each method was picked.
    """

    method: str
    shots: int
    ways: int
    episodes: int
    accuracy: float
    ci95: float
    seconds_per_task: float
    chosen: dict[str, int] | None = None

    def line(self) -> str:
        picks = "" if not self.chosen else "  picked " + ", ".join(f"{k} {v}" for k, v in sorted(self.chosen.items()))
        return (
            f"{self.method:>13}  {self.ways}-way {self.shots:>2}-shot  {self.accuracy:6.2f} ± {self.ci95:4.2f} %  "
            f"{self.seconds_per_task * 1000:8.1f} ms/task{picks}"
        )


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """ "all" or a comma-separated list (or a list) of head names, checked against the registry."""
    if isinstance(methods, str):
        methods = list_heads(FEW_SHOT) if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    for method in methods:
        check_head(method, FEW_SHOT)
    # The fixed methods first, auto last: it is judged against them.
    return sorted(methods, key=lambda m: (m == "auto", list_heads(FEW_SHOT).index(m)))


def evaluate_episodes(
    features: torch.Tensor,
    labels: Sequence[int],
    *,
    ways: int,
    shots: Sequence[int],
    episodes: int,
    methods: str | Sequence[str] = "all",
    queries: int = 15,
    seed: int = 0,
    text_prototypes: torch.Tensor | None = None,
    progress: bool = True,
) -> list[MethodScore]:
    """Evaluate few-shot methods on episodes sampled from cached embeddings.

    Every method sees the same episodes (same seed), so their accuracies are paired.

    Args:
        features: (N, D) normalised embeddings of the whole collection.
        labels: (N,) class index of each embedding.
        ways: Classes per episode.
        shots: Support sizes per class to evaluate, e.g. (1, 5, 16).
        episodes: Episodes per shot count.
        methods: "all", or head names.
        queries: Query examples per class and episode (fewer if a class runs short).
        seed: Seed of the episode sampler.
        text_prototypes: (classes, D) text embeddings of the collection's class names (CLIP models), or None.
        progress: Show a tqdm bar.
    """
    names = resolve_methods(methods)
    features = features.float().cpu()
    scores = []
    for shot in shots:
        drawn = sample_episodes(labels, ways, shot, episodes, queries, seed)
        accuracies = {m: [] for m in names}
        seconds = dict.fromkeys(names, 0.0)
        chosen: dict[str, int] = {}
        to_fit = [n for n in names if n != "auto"]
        if "auto" in names:
            to_fit += [n for n in CANDIDATES if n not in to_fit]
        for episode in tqdm(drawn, desc=f"{ways}-way {shot}-shot", disable=not progress or None, leave=False):
            support, query = features[episode.support], features[episode.query]
            support_labels = torch.from_numpy(episode.support_labels)
            query_labels = torch.from_numpy(episode.query_labels)
            text = None if text_prototypes is None else text_prototypes[list(episode.classes)]
            fitted, fit_seconds = {}, {}
            for name in to_fit:
                started = time.perf_counter()
                fitted[name] = create_head(name).fit(support, support_labels, text)
                fit_seconds[name] = time.perf_counter() - started
            if "auto" in names:
                # auto fits every candidate once and keeps one: its cost is theirs plus the choice.
                started = time.perf_counter()
                fitted["auto"] = AutoHead.from_fitted(fitted)
                fit_seconds["auto"] = time.perf_counter() - started + sum(fit_seconds[n] for n in CANDIDATES)
                chosen[fitted["auto"].chosen_name] = chosen.get(fitted["auto"].chosen_name, 0) + 1
            for name in names:
                started = time.perf_counter()
                predicted = fitted[name](query).argmax(dim=-1)
                seconds[name] += time.perf_counter() - started + fit_seconds[name]
                accuracies[name].append((predicted == query_labels).float().mean().item() * 100)
        for name in names:
            values = np.asarray(accuracies[name])
            scores.append(
                MethodScore(
                    name,
                    shot,
                    ways,
                    len(values),
                    float(values.mean()),
                    float(1.96 * values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan"),
                    seconds[name] / len(values),
                    chosen if name == "auto" else None,
                )
            )
    return scores


@dataclass
class Collection:
    """Embeddings of a labelled collection.

    Attributes:
        keys: "<source>/<key in it>" of each embedded image.
        features: (N, D) normalised embeddings.
        labels: (N,) class indices into `classes`.
        classes: Class names, sorted.
        errors: (key, reason) of the images that could not be read.
        seconds_per_image: Wall time of reading, decoding and embedding, per image.
    """

    keys: list[str]
    features: torch.Tensor
    labels: list[int]
    classes: list[str]
    errors: list[tuple[str, str]]
    seconds_per_image: float


@dataclass
class EvalResult:
    scores: list[MethodScore]
    collection: Collection
    out: Path | None

    def summary(self) -> str:
        c = self.collection
        head = (
            f"{len(c.labels):,} images, {len(c.classes)} classes, {len(c.errors)} unreadable; "
            f"features {c.seconds_per_image * 1000:.1f} ms/image"
        )
        return "\n".join([head, *(s.line() for s in self.scores), *([f"-> {self.out}"] if self.out else [])])


def embed_collection(
    sources: Sequence[str], encoder: Encoder, *, batch_size: int = 64, workers: int | None = None
) -> Collection:
    """Embed every image of labelled sources, pooling those that share class names (e.g. train and val).

    Args:
        sources: Folders of ``<class>/*.jpg`` (local, tar or URL) or tables with a label column; see
            ``open_source(labelled=True)``.

    Raises:
        PictagError: a source that does not open, or holds an image without a label.
    """
    workers = default_workers() if workers is None else workers
    opened = [open_source(uri, labelled=True) for uri in sources]  # every source checked before any embedding
    classes = sorted({name for source in opened for name in source.classes})
    index = {name: i for i, name in enumerate(classes)}
    keys: list[str] = []
    labels: list[int] = []
    chunks: list[torch.Tensor] = []
    errors: list[tuple[str, str]] = []
    started = time.perf_counter()
    for uri, source in zip(sources, opened, strict=True):
        embedded = embed_all(source, encoder, batch_size=batch_size, workers=workers, desc=f"embed {uri}")
        keys += [f"{uri}/{key}" for key in embedded.keys]
        labels += [index[label] for label in embedded.labels]
        chunks.append(embedded.features)
        errors += [(f"{uri}/{key}", reason) for key, reason in embedded.errors]
    seconds = time.perf_counter() - started
    return Collection(keys, torch.cat(chunks), labels, classes, errors, seconds / max(len(keys) + len(errors), 1))


def parse_shots(shots: str | Sequence[int]) -> list[int]:
    """ "1,5,16" or a list, as positive ints."""
    try:
        values = [int(s) for s in shots.split(",")] if isinstance(shots, str) else [int(s) for s in shots]
    except ValueError:
        raise PictagError(f"--shots {shots!r}: give comma-separated numbers, e.g. 1,5,16") from None
    if not values or min(values) < 1:
        raise PictagError(f"--shots {shots!r}: every shot count must be at least 1")
    return values


def evaluate_fewshot(data: list[str] | str, **options) -> EvalResult:
    """Embed a labelled collection once, then evaluate methods on sampled episodes; write a table and a plot. The
    Python twin of `pictag fewshot-eval`: options are the FewshotEvalConfig fields (ways=, shots=, method=, ...).

    Raises:
        PictagError: bad sources, methods, or more ways/shots than the collection can supply.
    """
    cfg = load_config(FewshotEvalConfig, data=data, **options)
    sources = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
    shots = parse_shots(cfg.shots)
    resolve_methods(cfg.method)
    encoder = build_encoder(
        cfg,
    )
    collection = embed_collection(
        [s.rstrip("/") for s in sources], encoder, batch_size=cfg.batch_size, workers=cfg.workers
    )
    text = None
    if encoder.has_text:
        names = [c.replace("_", " ") for c in collection.classes]
        text = ZeroShotClassifier(encoder, names, cfg.templates).prototypes.cpu()
    scores = evaluate_episodes(
        collection.features,
        collection.labels,
        ways=cfg.ways,
        shots=shots,
        episodes=cfg.episodes,
        methods=cfg.method,
        queries=cfg.queries,
        seed=cfg.seed,
        text_prototypes=text,
    )
    out = None
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
        write_scores(scores, out / "scores.csv")
        plot_scores(scores, out / "accuracy.png", title=f"{cfg.ways}-way, {cfg.episodes} episodes, {cfg.model}")
    return EvalResult(scores, collection, out)


def write_scores(scores: Sequence[MethodScore], path: Path) -> Path:
    """The scores as a CSV table (one row per method and shot count)."""
    rows = [{k: v for k, v in asdict(s).items() if k != "chosen"} for s in scores]
    with atomic_file(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_scores(scores: Sequence[MethodScore], path: Path, title: str) -> Path:
    """Accuracy against shots, one line per method, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in dict.fromkeys(s.method for s in scores):
        mine = [s for s in scores if s.method == method]
        ax.errorbar(
            [s.shots for s in mine],
            [s.accuracy for s in mine],
            yerr=[s.ci95 for s in mine],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set(xscale="log", xlabel="shots per class", ylabel="query accuracy (%)", title=title)
    ax.set_xticks(sorted({s.shots for s in scores}), [str(x) for x in sorted({s.shots for s in scores})])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path
