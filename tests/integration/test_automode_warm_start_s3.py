"""A warm start from earlier runs kept in an object store: their folders uploaded to a real S3 endpoint
on 127.0.0.1 (moto's server), read back by prefix with the credentials a pod gets from its Secret."""

from __future__ import annotations

import json

from kube_testserver import object_store

from automl_vision.data.storage import StorageConfig, upload_folder
from automl_vision.spec.automode import DatasetFingerprint
from automl_vision.spec.job import parse_job
from automl_vision.sweep.automode import prepare_automode, warm_start_seeds
from automl_vision.sweep.core import TrialRecord

FRIDGE = DatasetFingerprint("image_classification", 134, 4, 113.0, 0.75, labels_per_image=1.0)
POINT = {"model_name": "resnet34", "train_crop_size": 128, "valid_resize_size": 146, "valid_crop_size": 128,
         "optimizer": "adamw", "learning_rate": 0.002, "number_of_epochs": 20, "training_batch_size": 32,
         "augmentation": "none"}


def test_warm_start_reads_every_run_under_a_prefix(tmp_path, monkeypatch):
    run = tmp_path / "fridge-1"
    (run / "trials" / "trial-0000").mkdir(parents=True)
    (run / "trials" / "trial-0000" / "model.safetensors").write_bytes(b"\0" * 4096)  # not downloaded
    trials = [TrialRecord("trial-0000", 0, POINT, status="completed", best_value=0.62).to_json("accuracy")]
    (run / "sweep.json").write_text(json.dumps({"goal": "maximize", "dataset_fingerprint": FRIDGE.to_json(),
                                                "trials": trials}))
    with object_store("runs") as secret:
        for key, value in secret.items():
            monkeypatch.setenv(key, value)
        config = StorageConfig(endpoint=secret["AWS_ENDPOINT_URL"], access_key=secret["AWS_ACCESS_KEY_ID"],
                               secret_key=secret["AWS_SECRET_ACCESS_KEY"])
        upload_folder(run, "s3://runs/automl/fridge-1", config)
        job = prepare_automode(parse_job({"task": "image_classification", "training_data": "t.jsonl",
                                          "limits": {"max_trials": 8},
                                          "sweep": {"warm_start": ["s3://runs/automl"]},
                                          "training_parameters": {"pretrained": False}}), FRIDGE).job
        lines: list[str] = []
        warm = warm_start_seeds(job, FRIDGE, 8, lines.append)
    assert [s.parameters for s in warm.seeds] == [POINT]
    assert warm.seeds[0].source == "s3://runs/automl/fridge-1 trial-0000" and warm.runs_read == 1
    assert lines == ["warm start: the first 1 trial(s) try the best settings of 1 similar earlier run(s) (1 read)"]
