"""The lazy registry: names resolve on first use, unknown names and broken plug-ins fail naming what to fix."""

from __future__ import annotations

import json
import sys

import pytest

from pictag.errors import PictagError
from pictag.registry import Registry


def test_a_name_resolves_to_its_attribute_on_first_use_and_only_then(tmp_path, monkeypatch):
    (tmp_path / "lazy_plugin.py").write_text("VALUE = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("thing", {"lazy": "lazy_plugin:VALUE", "dumps": "json:dumps"})
    assert registry.names() == ["lazy", "dumps"]
    assert "lazy_plugin" not in sys.modules
    value = registry.get("lazy")
    assert value is sys.modules["lazy_plugin"].VALUE
    assert registry.get("lazy") is value
    assert registry.get("dumps") is json.dumps
    monkeypatch.delitem(sys.modules, "lazy_plugin")


def test_an_unknown_name_lists_the_known_ones_and_suggests_the_closest():
    registry = Registry("head", {"prototype": "json:dumps", "linear-probe": "json:loads"})
    with pytest.raises(
        PictagError, match=r"unknown head 'protoype': use one of prototype, linear-probe; did you mean 'prototype'\?"
    ):
        registry.get("protoype")
    with pytest.raises(PictagError) as caught:
        registry.get("zzz")
    assert "did you mean" not in str(caught.value)


def test_an_entry_whose_module_fails_to_import_names_the_entry_the_module_and_the_cause(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("import no_such_dependency_of_pictag\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("training task", {"broken": "broken_plugin:TASK"})
    with pytest.raises(PictagError, match="training task 'broken'.*broken_plugin.*no_such_dependency_of_pictag"):
        registry.get("broken")


def test_a_missing_attribute_names_the_entry_and_the_module():
    registry = Registry("service", {"gone": "json:no_such_attribute"})
    with pytest.raises(PictagError, match="service 'gone' cannot be loaded: json has no no_such_attribute"):
        registry.get("gone")


def test_a_plugin_registers_a_target_or_the_object_itself():
    registry = Registry("source kind", {})
    marker = object()
    registry.register("mine", marker)
    registry.register("text", "json:loads")
    assert registry.names() == ["mine", "text"]
    assert "mine" in registry and "other" not in registry
    assert registry.get("mine") is marker
    assert registry.get("text") is json.loads


def test_a_training_task_whose_module_fails_to_import_is_an_error_naming_it(tmp_path, monkeypatch):
    from pictag.train import task

    (tmp_path / "broken_task.py").write_text("import no_such_dependency_of_pictag\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks = Registry("training task", {**dict.fromkeys(task.TASKS.names(), "json:dumps"), "broken": "broken_task:Task"})
    monkeypatch.setattr(task, "TASKS", tasks)
    assert "broken" in task.list_tasks()
    with pytest.raises(PictagError, match="training task 'broken' cannot be loaded: importing broken_task failed"):
        task.get_task("broken")
    with pytest.raises(
        PictagError, match="unknown task 'clasifier': use one of .*classifier.*; did you mean 'classifier'"
    ):
        task.get_task("clasifier")


def test_an_entry_whose_module_raises_as_it_loads_names_the_error(tmp_path, monkeypatch):
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('no GPU driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("head", {"raising": "raising_plugin:Head"})
    with pytest.raises(
        PictagError,
        match="head 'raising' cannot be loaded: importing raising_plugin failed: RuntimeError: no GPU driver",
    ):
        registry.get("raising")
