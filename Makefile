# Two commands do all set-up on a fresh machine:
#   make demo   a whole AutoML job on real images, locally (no cluster, no GPU, no network)
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast docs pipeline-specs install clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the project's dependencies change.
# kubeflow-katib pins protobuf<5, which kfp and kserve cannot use: it is installed without its
# dependencies (the katib extra brings the others; see pyproject.toml).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,katib]'
	$(BIN)/pip install -q --no-deps kubeflow-katib==0.19.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/automl-vision demo --output-dir runs/demo

# One pytest worker per core (pytest-xdist), each test file on one worker so that a module's shared
# fixtures (a trained model, a server) are built once; runs that several files read are built once per
# session for all workers (tests/reference_runs.py); the slowest tests are listed at the end.
PYTEST_ARGS ?= -n auto --dist loadfile --no-loadscope-reorder --durations=25 --durations-min=2

# lint-imports: the package's layers and no import cycles (contracts in pyproject.toml), in seconds, first.
test: $(STAMP) browser
	$(BIN)/lint-imports
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) browser
	$(BIN)/lint-imports
	$(BIN)/pytest -q $(PYTEST_ARGS) -m "not slow"

# The page tests drive Debian's chromium (tests/browser_support.py); installed once where apt-get is.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	      || echo "chromium could not be installed: the browser tests will say why they skip"; \
	  else echo "no apt-get or not root: the browser tests will say why they skip"; fi; fi

# The compiled Kubeflow component specs (components/) and pipeline (pipelines/); a test checks they are current.
pipeline-specs: $(STAMP)
	$(BIN)/python -m automl_vision.pipeline.specs

docs: $(STAMP)
	$(BIN)/python -m automl_vision.spec.docs > docs/hyperparameters.md

clean:
	rm -rf runs .pytest_cache
