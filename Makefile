# Everything a fresh Linux machine needs: `make demo` and `make test` set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (first run only, a few minutes)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 2>/dev/null
	@# torch first, pinned to the build this platform provides; pip would otherwise resolve a newer one.
	@$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null || $(PY) -m pip install -q torch torchvision
	@$(PY) -m pip install -q -e ".[dev]" 2>/dev/null || $(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

# Zero-shot with CLIP; offline without cached CLIP weights, the bundled EfficientNet-Lite0 ImageNet classifier.
demo: $(STAMP)
	@$(PY) -m pictag.demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
