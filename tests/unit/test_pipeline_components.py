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


TRIALS = {"trial_outputs": "s3://automl/trials"}


@pytest.mark.parametrize("backend_inputs, messages", [
    ({"backend": "slurm"}, ["sweep: backend='slurm' is not a sweep backend; use one of: local, katib"]),
    ({"backend": "Katib"}, ["backend='Katib' is not a sweep backend"]),
    ({"backend": "katib", "run_id": "run-1", "cluster": TRIALS},
     ["backend='katib' needs katib_training_data: a URI of the training JSONL the trial pods can read"]),
    ({"backend": "katib", "katib_training_data": "s3://b/train.jsonl", "cluster": TRIALS},
     ["backend='katib' needs experiment_name, or run_id to derive it from"]),
    ({"backend": "katib", "katib_training_data": "/home/me/train.jsonl", "experiment_name": "flowers",
      "cluster": TRIALS},
     ["training_data='/home/me/train.jsonl' is a path on this machine, which a trial pod cannot read"]),
    # the trials' models are kept in object storage: without a place for them the step refuses to start
    ({"backend": "katib", "katib_training_data": "s3://b/train.jsonl", "experiment_name": "flowers"},
     ["backend='katib' needs the cluster setting trial_outputs: an s3://bucket/prefix where each trial uploads "
      "its model, metrics and logs", "automl-vision compile --cluster-settings FILE"]),
    ({"backend": "katib", "katib_training_data": "s3://b/train.jsonl", "experiment_name": "flowers",
      "cluster": {"trial_outputs": "/mnt/trials"}}, ["sweep: cluster: trial_outputs: String should match pattern"]),
    # a run asking for the backend the pipeline's sweep step was not placed for
    ({"backend": "katib", "katib_training_data": "s3://b/train.jsonl", "experiment_name": "flowers",
      "cluster": TRIALS, "compiled_for": "local"},
     ["backend='katib', but this pipeline was compiled for backend 'local': its sweep step holds a GPU of the "
      "pool, which Katib's trial pods would wait for; compile it for katib (automl-vision compile --backend katib"]),
    ({"backend": "local", "compiled_for": "katib"},
     ["backend='local', but this pipeline was compiled for backend 'katib': its sweep step runs on a CPU node "
      "without a GPU"]),
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


def _compiled(tmp_path, settings, backend):
    import yaml

    from automl_vision.pipeline.pipeline import compile_pipeline

    text = compile_pipeline(tmp_path / f"{backend}.yaml", settings=settings, backend=backend).read_text()
    spec, platform = yaml.safe_load_all(text)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_with_katib_the_sweep_step_waits_on_a_cpu_node_without_a_gpu(tmp_path):
    from automl_vision.spec.cluster import ClusterSettings

    settings = ClusterSettings(registry="registry.example.com/ml", trial_outputs="s3://automl/trials",
                               gpu={"node_selector": {"agentpool": "t4"}})
    spec, executors = _compiled(tmp_path, settings, "katib")
    sweep = spec["deploymentSpec"]["executors"]["exec-sweep"]["container"]
    assert sweep["image"] == settings.cpu_image
    assert "accelerator" not in sweep["resources"]
    # the CPU steps' requests (kfp writes memory in GB), not the GPU pool's 3 CPUs and 16Gi
    assert (sweep["resources"]["cpuRequest"], sweep["resources"]["memoryRequest"]) == (1, 4 * 2**30 / 1e9)
    assert "nodeSelector" not in executors["exec-sweep"] and "tolerations" not in executors["exec-sweep"]
    # it still reads the trials' outputs with the storage Secret
    assert executors["exec-sweep"]["secretAsEnv"][0]["secretName"] == settings.storage_secret.name
    # evaluate keeps the GPU; the sweep step is told the settings its trials get, and what it was placed for
    assert spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["resources"]["accelerator"]
    params = spec["root"]["dag"]["tasks"]["sweep"]["inputs"]["parameters"]
    assert ClusterSettings.model_validate_json(params["cluster"]["runtimeValue"]["constant"]) == settings
    assert params["compiled_for"] == {"runtimeValue": {"constant": "katib"}}

    spec, executors = _compiled(tmp_path, settings, "local")
    sweep = spec["deploymentSpec"]["executors"]["exec-sweep"]["container"]
    assert sweep["image"] == settings.cuda_image and sweep["resources"]["accelerator"]["resourceCount"] == "1"
    assert executors["exec-sweep"]["nodeSelector"]["labels"] == {"agentpool": "t4"}
    assert spec["root"]["dag"]["tasks"]["sweep"]["inputs"]["parameters"]["compiled_for"] == \
        {"runtimeValue": {"constant": "local"}}


def test_katib_without_trial_outputs_does_not_compile(tmp_path):
    from automl_vision.errors import ConfigError
    from automl_vision.spec.cluster import ClusterSettings

    with pytest.raises(ConfigError) as err:
        _compiled(tmp_path, ClusterSettings(registry="registry.example.com/ml"), "katib")
    assert "the Katib backend needs the cluster setting trial_outputs" in str(err.value)


def test_trials_get_the_storage_secret_as_the_steps_do(tmp_path):
    """One source: the Secret keys -> environment names of the compiled steps are the trial pod's."""
    from automl_vision.spec.cluster import ClusterSettings
    from automl_vision.spec.job import parse_job
    from automl_vision.sweep import katib

    settings = ClusterSettings(registry="registry.example.com/ml", trial_outputs="s3://automl/trials",
                               weights="s3://models/weights",
                               storage_secret={"name": "store", "keys": {"ak": "AWS_ACCESS_KEY_ID",
                                                                         "sk": "AWS_SECRET_ACCESS_KEY"}})
    spec, executors = _compiled(tmp_path, settings, "katib")
    [secret] = executors["exec-evaluate"]["secretAsEnv"]
    steps = {(secret["secretName"], k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]}
    job = parse_job({"task": "image_classification", "training_data": "s3://automl/train.jsonl",
                     "search_space": [{"learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.1}}]})
    [exp] = katib.experiments_from_job(job, name="flowers", cluster=settings)
    container = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    trials = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"], e["name"])
              for e in container["env"] if "valueFrom" in e}
    assert trials == steps == {("store", "ak", "AWS_ACCESS_KEY_ID"), ("store", "sk", "AWS_SECRET_ACCESS_KEY")}
    step_env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["env"]}
    trial_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert trial_env == step_env == {"PYTHONUNBUFFERED": "1", "AUTOML_VISION_WEIGHTS": "s3://models/weights"}
