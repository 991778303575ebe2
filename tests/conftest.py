"""Shared pytest setup: tests marked ``gpu`` are skipped on machines without CUDA; tiny datasets,
the CLI run in the test's process (``cli_main``) and the runs several modules share (``reference_*``)."""

from __future__ import annotations

import collections
import os

import pytest

# No test reaches the libraries' real download sites, whatever the machine's network: a missing pretrained
# file is the offline error at once (the download tests point each source at a server on 127.0.0.1 and
# clear this themselves). Subprocesses of the tests inherit it.
os.environ.setdefault("AUTOML_VISION_OFFLINE", "1")


def _own_cores() -> None:
    """Under pytest-xdist, give each worker its own share of the cores, set before torch loads.

    Every worker's torch would otherwise start one thread per core of the machine, and so would the
    trials and servers its tests start: on 2 cores with 2 workers, 4 or more busy threads contend for
    2 cores and a small model's epoch takes 10 times as long. Subprocesses inherit the share, and the
    code sizes its threads, trials and data workers from it (``os.sched_getaffinity``), as it does in a
    container given a CPU limit.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker and count and hasattr(os, "sched_setaffinity")):
        return
    cores, index, count = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    if len(cores) >= count:
        os.sched_setaffinity(0, cores[index::count])


_own_cores()


SHARED_RUNS = ("reference_pipeline_run", "reference_library_run")


def pytest_collection_modifyitems(config, items):
    # The order pytest-xdist hands whole files out in (`--no-loadscope-reorder` in the Makefile), each
    # file's tests in their own order: files with the most slow tests first, so that the long files start
    # at once and the many short ones fill the workers' gaps at the end; among them, the files that read
    # the shared runs last, so that the first worker has built the runs by then (`_shared_runs_first`)
    # and no worker sits waiting for them.
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    shared = {item.path for item in items if set(SHARED_RUNS) & set(getattr(item, "fixturenames", ()))}
    items.sort(key=lambda item: (not slow[item.path], item.path in shared, -slow[item.path]))
    config.stash[_SHARED_RUNS_USED] = [name for name in SHARED_RUNS
                                       if any(name in getattr(item, "fixturenames", ()) for item in items)]
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return  # no torch import for CPU-only runs
    import torch  # here: only when a test needs CUDA

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in gpu_items:
        item.add_marker(skip)


# --- tiny synthetic datasets ---------------------------------------------------------------------

import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import reference_runs  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_classification_dataset(root: Path, *, n_per_class: int = 6, classes=("red", "green"), size: int = 24,
                                multilabel: bool = False, seed: int = 0, name: str = "train.jsonl") -> Path:
    """PNG images of noisy colour patches, one class per colour, plus a JSONL file; returns the JSONL path.

    Multi-label images mix two colours side by side and carry both labels.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for ci, cls in enumerate(classes):
        for i in range(n_per_class):
            pixels = np.empty((size, size, 3), dtype=np.float32)
            labels = [cls]
            pixels[:] = COLOURS[cls]
            if multilabel and i % 2:
                other = classes[(ci + 1) % len(classes)]
                pixels[:, size // 2:] = COLOURS[other]
                labels.append(other)
            pixels += rng.normal(0, 20, pixels.shape)
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            rel = f"images/{cls}_{i:03d}_{seed}.png"
            image.save(root / rel)
            lines.append({"image_url": rel, "label": sorted(labels) if multilabel else cls})
    path = root / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def make_dataset():
    return make_classification_dataset


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test: on a busy 2-core machine, spinning threads make tiny
    models many times slower. Modules of small-model tests use it through ``pytestmark``."""
    import torch  # here: collecting the tests need not import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the CLI in this process ---------------------------------------------------------------------

@contextlib.contextmanager
def restored_logging():
    """The CLI sets up logging for its process; put back what the test runner had when the block ends."""
    root, ours = logging.getLogger(), logging.getLogger("automl_vision")
    handlers, levels = root.handlers[:], (root.level, ours.level)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
        logging.captureWarnings(False)


@pytest.fixture
def cli_logging():
    with restored_logging():
        yield


@pytest.fixture
def cli_main(capfd):
    """``automl-vision`` run in this process: ``cli_main(*args)`` returns a ``CompletedProcess`` with the
    exit code and what the command wrote. For tests that check outputs and exit codes; a test that
    needs a process of its own (a kill, a server, signals, its own environment) starts one."""
    from automl_vision.cli import main  # here, not at the top: collecting the tests need not import the CLI

    def run(*args) -> subprocess.CompletedProcess:
        with restored_logging():
            capfd.readouterr()
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
            out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["automl-vision", *map(str, args)], code, out, err)

    return run


# --- runs shared by the modules that read them (tests/reference_runs.py) -----------------------------

_SHARED_RUNS_USED = pytest.StashKey[list]()


@pytest.fixture(scope="session", autouse=True)
def _shared_runs_first(request):
    """The first xdist worker builds the shared runs the selected tests read before its first test; the
    other workers meanwhile run the files that do not read them (ordered first)."""
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
        for name in request.config.stash.get(_SHARED_RUNS_USED, []):
            request.getfixturevalue(name)


@pytest.fixture(scope="session")
def reference_pipeline_run(tmp_path_factory):
    """One ``automl-vision run`` of a two-trial job through the pipeline engine, per session."""
    return reference_runs.pipeline_run(reference_runs.shared_root(tmp_path_factory), make_classification_dataset)


@pytest.fixture(scope="session")
def reference_library_run(tmp_path_factory):
    """One ``automl-vision run --engine library`` of a one-trial job, per session; its best_model is a
    package with model.onnx."""
    return reference_runs.library_run(reference_runs.shared_root(tmp_path_factory), make_classification_dataset)
