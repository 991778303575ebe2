"""The champion/challenger gate's rule, and the local registry's records (one version per run, the champion
property and its label, a retry that keeps the first decision, a broken file named)."""

from __future__ import annotations

import json
import math

import pytest

from automl_vision.errors import ConfigError
from automl_vision.registry.gate import ChampionScore, GateDecision, decide
from automl_vision.registry.records import katib_experiment, registered_model_name
from automl_vision.registry.register import register_run, resolve_version
from automl_vision.registry.store import LOCAL_REGISTRY_FILE, LocalRegistry, RegistryError, open_registry


def test_the_first_version_is_promoted():
    d = decide("accuracy", 0.5, None)
    assert d.promote and "no champion yet" in d.reason


@pytest.mark.parametrize("value, champion, margin, promote", [
    (0.80, 0.79, 0.0, True),     # +1 point
    (0.79, 0.79, 0.0, False),    # a tie is not better
    (0.78, 0.79, 0.0, False),
    (0.80, 0.79, 1.0, False),    # +1 point is not more than a margin of 1
    (0.805, 0.79, 1.0, True),    # +1.5 points
])
def test_the_new_model_must_beat_the_champion_by_more_than_the_margin(value, champion, margin, promote):
    d = decide("accuracy", value, ChampionScore("3", "accuracy", champion), margin)
    assert d.promote is promote
    assert d.champion_version == "3" and d.champion_value == champion and d.margin_points == margin
    delta = (value - champion) * 100
    assert f"{delta:+.2f} points" in d.reason and "version 3" in d.reason


def test_models_without_a_comparable_score():
    assert not decide("mean_average_precision", math.nan, ChampionScore("1", "mean_average_precision", 0.3)).promote
    assert not decide("accuracy", 0.9, ChampionScore("1", "iou", 0.3)).promote  # scored on another metric
    unscored = decide("accuracy", 0.1, ChampionScore("1", "accuracy", None))  # the champion scored nothing
    assert unscored.promote and "has no accuracy" in unscored.reason


def test_a_decision_round_trips_through_the_versions_properties():
    d = decide("iou", 0.5, ChampionScore("2", "iou", 0.4), 2.5)
    back = GateDecision.from_properties(d.properties(), "iou", 0.5)
    assert back == d
    assert GateDecision.from_properties({}, "iou", 0.5) is None


def test_registered_model_names():
    assert registered_model_name("", "shapes", "image_classification") == "shapes"
    assert registered_model_name("", "", "image_object_detection") == "automl-vision-image-object-detection"
    assert registered_model_name("mine", "shapes", "image_classification") == "mine"
    with pytest.raises(ConfigError, match="up to 63 letters"):
        registered_model_name("no spaces", "", "image_classification")


def _package(tmp_path, name: str = "pkg"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # the local registry copies the folder as it is
    return folder


def _register(registry, run_id: str, package, value: float, champion: ChampionScore | None, **kwargs):
    return register_run(registry, "shapes", run_id=run_id, package_dir=package,
                        metadata={"task": "image_classification", "model_name": "resnet18"},
                        decision=decide("accuracy", value, champion), echo=lambda s: None, **kwargs)


def test_the_local_registry_keeps_one_version_per_run_and_one_champion(tmp_path):
    registry, package = open_registry(str(tmp_path / "registry")), _package(tmp_path)
    first = _register(registry, "run-a", package, 0.5, None)
    assert first.created and first.record.version == "1" and first.decision.promote
    again = _register(registry, "run-a", package, 0.5, None)
    assert not again.created and again.record.version == "1"
    worse = _register(registry, "run-b", package, 0.4, ChampionScore("1", "accuracy", 0.5))
    assert worse.record.version == "2" and not worse.decision.promote
    better = _register(registry, "run-c", package, 0.6, ChampionScore("1", "accuracy", 0.5))
    assert better.record.version == "3" and better.decision.promote
    versions = registry.versions("shapes")
    assert [(v.version, v.champion, "champion" in v.metadata) for v in versions] == [
        ("1", False, False), ("2", False, False), ("3", True, True)]
    # each version holds a copy of its package, so the champion outlives the run folder it came from
    assert versions[2].uri == str(tmp_path / "registry" / "models" / "shapes" / "3")
    assert (tmp_path / "registry" / "models" / "shapes" / "3" / "config.json").is_file()
    assert resolve_version(registry, "shapes", "champion").version == "3"
    assert resolve_version(registry, "shapes", "latest").version == "3"
    assert resolve_version(registry, "shapes", "2").metadata["gate_decision"] == "not promoted"
    with pytest.raises(RegistryError, match=r"no '7' version \(versions: 1, 2, 3 \(champion\)\)"):
        resolve_version(registry, "shapes", "7")
    with pytest.raises(RegistryError, match="holds no registered model 'other'"):
        resolve_version(registry, "other", "champion")
    doc = json.loads((tmp_path / "registry" / LOCAL_REGISTRY_FILE).read_text())
    assert doc["registered_models"]["shapes"]["custom_properties"]["champion_version"] == "3"


def test_a_champion_that_changed_during_the_run_is_not_replaced(tmp_path):
    registry, package = LocalRegistry(tmp_path / "registry"), _package(tmp_path)
    _register(registry, "run-a", package, 0.5, None)
    _register(registry, "run-b", package, 0.7, ChampionScore("1", "accuracy", 0.5))  # now the champion
    late = _register(registry, "run-c", package, 0.6, ChampionScore("1", "accuracy", 0.5))  # scored against 1
    assert not late.decision.promote and "the champion changed while this run was evaluated" in late.decision.reason
    assert resolve_version(registry, "shapes", "champion").version == "2"


def test_a_retry_keeps_the_first_decision(tmp_path):
    registry, package = LocalRegistry(tmp_path / "registry"), _package(tmp_path)
    _register(registry, "run-a", package, 0.5, None)
    _register(registry, "run-b", package, 0.4, ChampionScore("1", "accuracy", 0.5))
    # the same run registered again with another score (a rerun of the step) keeps what was decided
    retried = _register(registry, "run-b", package, 0.9, ChampionScore("1", "accuracy", 0.5))
    assert not retried.created and not retried.decision.promote
    assert resolve_version(registry, "shapes", "champion").version == "1"
    forced = _register(registry, "run-b", package, 0.4, None, override=True)  # a promotion by hand
    assert forced.decision.promote and resolve_version(registry, "shapes", "champion").version == "2"


def test_a_half_registered_version_is_completed_and_never_deployed(tmp_path):
    registry, package = LocalRegistry(tmp_path / "registry"), _package(tmp_path)
    _register(registry, "run-a", package, 0.5, None)
    # a registration that stopped after creating its version (before its model was attached)
    registry.create_version("shapes", "run-b", {"task": "image_classification"}, author="t", description="")
    assert [v.complete for v in registry.versions("shapes")] == [True, False]
    assert resolve_version(registry, "shapes", "latest").version == "1"
    done = _register(registry, "run-b", package, 0.6, ChampionScore("1", "accuracy", 0.5))
    assert not done.created and done.record.complete and done.decision.promote
    assert len(registry.versions("shapes")) == 2


def test_registry_locations_and_a_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="http"):
        open_registry("s3://bucket/registry")
    with pytest.raises(ConfigError, match="no model registry given"):
        open_registry("")
    (tmp_path / LOCAL_REGISTRY_FILE).write_text("{not json")
    with pytest.raises(RegistryError, match=f"cannot read the local model registry {tmp_path / LOCAL_REGISTRY_FILE}"):
        LocalRegistry(tmp_path)


def test_a_registry_that_stores_no_packages_needs_their_uri_and_gets_nothing_without_it(tmp_path):
    class Remote(LocalRegistry):  # the Kubeflow Model Registry records URIs only
        local = False

    remote = Remote(tmp_path / "remote")
    with pytest.raises(ConfigError, match="object store"):
        register_run(remote, "m", run_id="r", package_dir=_package(tmp_path), metadata={},
                     decision=decide("accuracy", 0.5, None))
    assert remote.versions("m") == []


def test_the_katib_experiment_of_a_run(tmp_path):
    assert katib_experiment(tmp_path) == ""  # a sweep that did not run on Katib
    (tmp_path / "katib.json").write_text(json.dumps({"experiments": ["run-7-0", "run-7-1"],
                                                     "best_experiment": "run-7-1"}))
    assert katib_experiment(tmp_path) == "run-7-1"


def test_the_register_step_reads_the_evaluate_steps_metrics_without_loading_torch():
    # the step's own imports: a process that only registers starts in a fraction of a second, not seconds
    import subprocess  # (only this test starts a process)
    import sys

    from automl_vision.pipeline.registration import METRICS_FILE
    from automl_vision.report.evaluation import METRICS_FILE as WRITTEN

    assert METRICS_FILE == WRITTEN
    code = ("import sys; from automl_vision.pipeline.registration import register_model_step; "
            "from automl_vision.registry.store import KubeflowRegistry; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
