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
