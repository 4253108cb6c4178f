"""Episode sampling is seeded and reproducible; task layouts and labelled collections are read and checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import jpeg_bytes, write_tar
from pictag.errors import PictagError
from pictag.fewshot.evaluate import embed_collection, evaluate_episodes
from pictag.fewshot.tasks import find_tasks, sample_episodes
from pictag.models import create_model

LABELS = np.repeat(np.arange(6), 20)


def _same(a, b) -> bool:
    return all(
        x.classes == y.classes and all(np.array_equal(getattr(x, f), getattr(y, f)) for f in ("support", "query"))
        for x, y in zip(a, b)
    )


def test_episodes_are_reproducible_and_seed_dependent():
    first = sample_episodes(LABELS, ways=5, shots=3, episodes=10, queries=4, seed=1)
    assert _same(first, sample_episodes(LABELS, ways=5, shots=3, episodes=10, queries=4, seed=1))
    assert not _same(first, sample_episodes(LABELS, ways=5, shots=3, episodes=10, queries=4, seed=2))


def test_episode_shapes_labels_and_disjointness():
    for e in sample_episodes(LABELS, ways=4, shots=5, episodes=20, queries=7, seed=0):
        assert len(set(e.classes)) == 4 and len(e.support) == 20 and len(e.query) == 28
        assert not set(e.support) & set(e.query)
        assert [e.classes[i] for i in e.support_labels] == LABELS[e.support].tolist()
        assert [e.classes[i] for i in e.query_labels] == LABELS[e.query].tolist()


def test_queries_shrink_when_a_class_runs_short_and_too_few_classes_fail():
    labels = np.array([0] * 4 + [1] * 30 + [2] * 30)
    e = sample_episodes(labels, ways=3, shots=3, episodes=1, queries=10)[0]
    assert (e.query_labels == e.classes.index(0)).sum() == 1
    with pytest.raises(PictagError, match="lower --ways or --shots"):
        sample_episodes(labels, ways=3, shots=4, episodes=1)


def test_evaluation_is_reproducible_and_reports_confidence_intervals():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    features = F.normalize(centres[LABELS] + 0.3 * torch.randn(len(LABELS), 16, generator=g), dim=-1)
    run = lambda: evaluate_episodes(  # noqa: E731
        features, LABELS, ways=3, shots=[1, 2], episodes=4, methods="prototype,auto", progress=False
    )
    first, second = run(), run()
    assert [(s.method, s.shots, s.accuracy, s.ci95) for s in first] == [
        (s.method, s.shots, s.accuracy, s.ci95) for s in second
    ]
    assert {s.method for s in first} == {"prototype", "auto"} and all(s.ci95 >= 0 for s in first)
    assert sum(next(s for s in first if s.method == "auto" and s.shots == 2).chosen.values()) == 4


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_find_tasks_reads_the_layout(tmp_path):
    for task in ("setA/task1", "setA/task2", "setB/task1"):
        for cls in ("ant", "bee"):
            _touch(tmp_path / task / "support" / cls / "1.jpg")
        _touch(tmp_path / task / "query" / "q1.jpg")
        _touch(tmp_path / task / "query" / "notes.txt")
    tasks = find_tasks(tmp_path)
    assert [t.name for t in tasks] == ["setA/task1", "setA/task2", "setB/task1"]
    assert tasks[0].classes == ("ant", "bee")
    assert tasks[0].support == (("setA/task1/support/ant/1.jpg", 0), ("setA/task1/support/bee/1.jpg", 1))
    assert tasks[0].query == ("setA/task1/query/q1.jpg",)
    assert tasks[0].query_name(tasks[0].query[0]) == "q1.jpg"
    single = find_tasks(tmp_path / "setA/task1")
    assert single[0].name == "." and single[0].query == ("query/q1.jpg",)


def test_find_tasks_refuses_empty_support_classes_and_missing_tasks(tmp_path):
    _touch(tmp_path / "t1/support/ant/1.jpg")
    (tmp_path / "t1/support/bee").mkdir(parents=True)
    _touch(tmp_path / "t1/query/q.jpg")
    with pytest.raises(PictagError, match=r"t1/support has empty class folder\(s\) 'bee': add images"):
        find_tasks(tmp_path)
    with pytest.raises(PictagError, match="holds no task"):
        find_tasks(tmp_path / "t1/support")
    _touch(tmp_path / "t1/support/bee/1.jpg")
    _touch(tmp_path / "t1/support/stray.jpg")
    with pytest.raises(PictagError, match=r"t1/support is read as a folder of classes .* \(e.g. stray.jpg\)"):
        find_tasks(tmp_path)


def test_collection_pools_labelled_sources_of_any_storage(tmp_path, tiny_open_clip):
    image = jpeg_bytes(Image.new("RGB", (32, 32), "red"))
    for key in ("ant/1.jpg", "bee/2.jpg"):
        (tmp_path / "train" / key).parent.mkdir(parents=True)
        (tmp_path / "train" / key).write_bytes(image)
    val = write_tar(tmp_path / "val.tar", {"bee/3.jpg": image, "wasp/4.jpg": image})
    spec, checkpoint = tiny_open_clip
    encoder = create_model(spec, checkpoint=checkpoint, device="cpu")
    collection = embed_collection([f"{tmp_path}/train", str(val)], encoder, workers=0)
    assert collection.classes == ["ant", "bee", "wasp"]
    assert [collection.classes[i] for i in collection.labels] == ["ant", "bee", "bee", "wasp"]
    assert [key.removeprefix(str(tmp_path)) for key in collection.keys] == [
        "/train/ant/1.jpg",
        "/train/bee/2.jpg",
        "/val.tar/bee/3.jpg",
        "/val.tar/wasp/4.jpg",
    ]
    assert collection.features.shape == (4, encoder.embed_dim)
