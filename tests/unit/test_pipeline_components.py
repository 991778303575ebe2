"""The ingest component called directly (``component.python_func``) with real artifacts on tiny data.

The training, evaluation and packaging steps need a trained model: tests/integration/
test_pipeline_steps.py calls them the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp.dsl import Dataset, Metrics

from automl_vision.data.manifest import read_manifest
from automl_vision.errors import DataError
from automl_vision.pipeline.components import ingest
from automl_vision.spec.tasks import ImageTask


def _outputs(tmp_path):
    return (Dataset(uri=str(tmp_path / "out" / "dataset")), Dataset(uri=str(tmp_path / "out" / "validation")),
            Metrics(uri=str(tmp_path / "out" / "statistics")))


def test_ingest_writes_the_manifest_the_split_and_the_statistics(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=5, classes=("red", "green", "blue"))
    dataset, validation, statistics = _outputs(tmp_path)
    ingest.python_func(task="image_classification", training_data=str(data), dataset=dataset,
                       validation=validation, statistics=statistics,
                       training_parameters={"split_ratio": 0.4, "seed": 3.0})  # kfp passes numbers as floats

    ingested = read_manifest(dataset.path, ImageTask.IMAGE_CLASSIFICATION)
    assert len(ingested.train) == 9 and len(ingested.validation) == 6
    assert json.loads((tmp_path / "out" / "dataset" / "stats.json").read_text())["images"] == 15
    assert statistics.metadata == {"images": 15, "train_images": 9, "validation_images": 6, "classes": 3}
    # the held-out split as JSONL, for evaluate: the same images the manifest holds out
    lines = (tmp_path / "out" / "validation" / "validation.jsonl").read_text().splitlines()
    held_out = {(tmp_path / "out" / "validation" / json.loads(x)["image_url"]).resolve() for x in lines}
    assert held_out == {Path(r.path).resolve() for r in ingested.validation}


def test_ingest_with_validation_data_keeps_the_files_split(tmp_path, make_dataset):
    train = make_dataset(tmp_path / "data", n_per_class=4)
    val = make_dataset(tmp_path / "data", n_per_class=2, seed=1, name="val.jsonl")
    dataset, validation, statistics = _outputs(tmp_path)
    ingest.python_func(task="image_classification", training_data=str(train), validation_data=str(val),
                       dataset=dataset, validation=validation, statistics=statistics)
    assert statistics.metadata == {"images": 12, "train_images": 8, "validation_images": 4, "classes": 2}
    assert list((tmp_path / "out" / "validation").iterdir()) == []  # evaluate reads val.jsonl itself


@pytest.mark.parametrize("append, messages", [
    ('{"image_url": "images/missing.png", "label": "red"}\n', [":5: image_url='images/missing.png'", "not found"]),
    ('{"image_url": "images/red_000_0.png"}\n', [":5:", "label"]),
    ('{"label": "red"\n', [":5:", "not valid JSON"]),
])
def test_ingest_refuses_bad_data_naming_the_line(tmp_path, make_dataset, append, messages):
    data = make_dataset(tmp_path / "data", n_per_class=2)
    with data.open("a") as f:
        f.write(append)
    dataset, validation, statistics = _outputs(tmp_path)
    with pytest.raises(DataError) as err:
        ingest.python_func(task="image_classification", training_data=str(data), dataset=dataset,
                           validation=validation, statistics=statistics)
    for message in messages:
        assert message in str(err.value)
    assert not (tmp_path / "out" / "dataset" / "manifest.parquet").exists()


@pytest.mark.parametrize("backend_inputs, messages", [
    ({"backend": "slurm"}, ["sweep: backend='slurm' is not a sweep backend; use one of: local, katib"]),
    ({"backend": "Katib"}, ["backend='Katib' is not a sweep backend"]),
    ({"backend": "katib", "run_id": "run-1"}, ["backend='katib' needs katib_training_data: a URI of the training "
                                               "JSONL the trial pods can read"]),
    ({"backend": "katib", "katib_training_data": "s3://b/train.jsonl"},
     ["backend='katib' needs experiment_name, or run_id to derive it from"]),
    ({"backend": "katib", "katib_training_data": "/home/me/train.jsonl", "experiment_name": "flowers"},
     ["training_data='/home/me/train.jsonl' is a path on this machine, which a trial pod cannot read"]),
])
def test_sweep_refuses_bad_backend_inputs_before_any_trial(tmp_path, backend_inputs, messages):
    """Checked before anything runs: no trial, no cluster call (there is no cluster here)."""
    from kfp.dsl import Artifact

    from automl_vision.errors import ConfigError
    from automl_vision.pipeline.components import sweep

    run = Artifact(uri=str(tmp_path / "run"))
    with pytest.raises(ConfigError) as err:
        sweep.python_func(task="image_classification", training_data=Dataset(uri=str(tmp_path / "dataset")),
                          limits={"max_trials": 1.0}, sweep={"sampling_algorithm": "grid"},
                          search_space=[{"model_name": {"type": "choice", "values": ["resnet18"]}}],
                          training_parameters={}, run=run, leaderboard=Metrics(uri=str(tmp_path / "lb")),
                          **backend_inputs)
    for message in messages:
        assert message in str(err.value)
    assert not (tmp_path / "run" / "trials").exists()
