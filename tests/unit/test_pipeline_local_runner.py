"""kfp's local runner driven the way ``automl-vision run`` drives it: a small real pipeline run in
subprocesses, its verbose output kept in the log, our progress shown, a step's error turned back into
our own exception. (No ``from __future__ import annotations``: kfp reads the annotations.)"""

import json

import pytest
from kfp import dsl
from kfp.dsl import Metrics, Output

from automl_vision.errors import ConfigError, DataError
from automl_vision.pipeline.local import (
    LOG_FILE,
    SUMMARY_FILE,
    PipelineStepFailed,
    StepRecord,
    last_exception,
    run_locally,
    step_error,
)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def count(n: int, numbers: Output[Metrics]) -> int:
    print(f"counting to {n}", flush=True)
    numbers.log_metric("n", n)
    return n


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def check(n: int, limit: int):
    from automl_vision.errors import DataError  # a component's body runs alone in its step's process

    if n > limit:
        raise DataError(["data.jsonl:3: label missing", "data.jsonl:5: image_url='x.gif' has an unsupported format"])
    print(f"{n} is within {limit}", flush=True)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def crash(n: int):
    raise KeyError(f"no entry {n}")


@dsl.pipeline(name="two-steps")
def two_steps(n: int, limit: int):
    counted = count(n=n)
    check(n=counted.outputs["Output"], limit=limit)


@dsl.pipeline(name="crashing")
def crashing(n: int):
    crash(n=count(n=n).outputs["Output"])


def test_progress_is_ours_and_the_executor_json_stays_in_the_log(tmp_path):
    shown: list[str] = []
    run = run_locally(two_steps, {"n": 3, "limit": 5}, tmp_path, echo=shown.append)

    assert [s.name for s in run.steps] == ["count", "check"]
    assert [s.status for s in run.steps] == ["succeeded", "succeeded"]
    assert run.failed_step is None
    assert shown[0] == "[pipeline] step 1/2: count started"
    assert shown[1] == "counting to 3"
    assert shown[2].startswith("[pipeline] step 1/2: count succeeded in ") and shown[2].endswith("(n 3)")
    assert "3 is within 5" in shown
    text = "\n".join(shown)
    for noise in ("executor_input", "KFP Executor", "{", "INFO", "\x1b["):
        assert noise not in text, noise
    log = (tmp_path / LOG_FILE).read_text()
    assert "Got executor_input" in log and '"parameterValues"' in log
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert [s["status"] for s in summary["steps"]] == ["succeeded", "succeeded"]
    assert summary["steps"][0]["outputs"]["numbers"]["metadata"] == {"n": 3}
    assert summary["steps"][0]["outputs"]["Output"] == 3
    assert run.artifact_path("count", "numbers").parent.name == "count"  # metrics live in the metadata


def test_a_data_error_in_a_step_comes_back_as_a_data_error(tmp_path):
    shown: list[str] = []
    run = run_locally(two_steps, {"n": 7, "limit": 5}, tmp_path, echo=shown.append)

    assert [s.status for s in run.steps] == ["succeeded", "failed"]
    assert run.failed_step.name == "check"
    with pytest.raises(DataError) as err:
        run.raise_for_failure()
    assert "data.jsonl:3: label missing" in str(err.value)
    assert "data.jsonl:5: image_url='x.gif' has an unsupported format" in str(err.value)
    assert shown[-1].startswith("[pipeline] step 2/2: check failed in ")
    assert not any("Traceback" in line or "File " in line for line in shown)
    assert "Traceback (most recent call last)" in (tmp_path / LOG_FILE).read_text()


def test_an_internal_error_names_the_step_and_the_log(tmp_path):
    run = run_locally(crashing, {"n": 2}, tmp_path, echo=lambda s: None)
    with pytest.raises(PipelineStepFailed) as err:
        run.raise_for_failure()
    assert str(err.value).startswith("pipeline step crash failed: KeyError: 'no entry 2'")
    assert str(tmp_path / LOG_FILE) in str(err.value)


@pytest.mark.parametrize("lines, expected", [
    (["hello"], None),
    (["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "    f()",
      "automl_vision.errors.ConfigError: job: 2 problems:", "  - a", "  - b"],
     ("automl_vision.errors.ConfigError", "job: 2 problems:\n  - a\n  - b")),
    (["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: first",
      "", "During handling of the above exception, another exception occurred:", "",
      "Traceback (most recent call last):", '  File "y.py", line 2', "    g()", "    ^^^",
      "KeyError: 'second'"], ("KeyError", "'second'")),
    (["Traceback (most recent call last):", '  File "x.py", line 1', "KeyboardInterrupt"], ("KeyboardInterrupt", "")),
])
def test_last_exception(lines, expected):
    assert last_exception(lines) == expected


def test_a_config_error_stays_a_config_error(tmp_path):
    step = StepRecord("sweep", status="failed", output_lines=[
        "Traceback (most recent call last):", '  File "x.py", line 1',
        "automl_vision.errors.ConfigError: sweep: search_space[0].model_name: unknown"])
    err = step_error(step, tmp_path / LOG_FILE)
    assert isinstance(err, ConfigError) and str(err) == "sweep: search_space[0].model_name: unknown"
