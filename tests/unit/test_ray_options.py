"""Executor options, and `--executor ray` where Ray is not installed (no cluster is started here)."""

from __future__ import annotations

import sys

import pytest

from pictag.distributed.options import concurrency_range
from pictag.errors import PictagError
from pictag.pipeline.options import ClassifyConfig
from pictag.store.options import EmbedConfig


def test_concurrency_is_n_or_min_max():
    assert concurrency_range("3") == (3, 3) and concurrency_range("1,4") == (1, 4) and concurrency_range(None) is None
    for bad in ("0", "4,1", "a", "1,2,3"):
        with pytest.raises(PictagError, match="--concurrency must be N or MIN,MAX"):
            ClassifyConfig(concurrency=bad)
    assert EmbedConfig(source="s", out="o", executor="ray", gpus_per_worker=0.5).gpus_per_worker == 0.5


def test_executor_ray_without_ray_is_one_line(tmp_path, monkeypatch, capsys):
    from pictag.distributed.ray_executor import INSTALL, import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed: `import ray` raises ImportError
    with pytest.raises(PictagError) as raised:
        import_ray()
    assert str(raised.value) == INSTALL == "--executor ray needs Ray: pip install 'pictag[ray]'"
