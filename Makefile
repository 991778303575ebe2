# Two commands do all set-up on a fresh machine:
#   make demo   a whole AutoML job on real images, locally (no cluster, no GPU, no network)
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast docs install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/automl-vision demo --output-dir runs/demo

test: $(STAMP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

docs: $(STAMP)
	$(BIN)/python -m automl_vision.spec.docs > docs/hyperparameters.md

clean:
	rm -rf runs .pytest_cache
