"""Option groups are plain data owned by their components: light to import, and every command composes them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import subprocess_env

OPTION_MODULES = [
    "pictag.config",
    "pictag.data.options",
    "pictag.models.options",
    "pictag.pipeline.options",
    "pictag.distributed.options",
    "pictag.store.options",
    "pictag.fewshot.options",
    "pictag.eval.options",
    "pictag.train.options",
    "pictag.serve.config",
]
# What an option module must not load: model and image libraries, and the implementation modules of data and models.
HEAVY = ["torch", "PIL", "pyarrow", "numpy", "fsspec", "pictag.data.sources", "pictag.data.decode", "pictag.heads"]


@pytest.mark.parametrize("module", OPTION_MODULES)
def test_an_option_module_imports_nothing_heavy(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"
