"""Every model name of the spec resolves to its library's own source, a way to verify the file and its
licences, without any network access; base URLs are settings; a job says which files it needs."""

from __future__ import annotations

import re

import pytest
import timm
import torchvision

from automl_vision.errors import ConfigError
from automl_vision.models import catalogue
from automl_vision.models.weights import BASE_URL_ENV
from automl_vision.spec.job import parse_job
from automl_vision.spec.tasks import CLASSIFICATION_MODELS, DETECTION_MODELS, SEGMENTATION_MODELS

SPEC_NAMES = [*CLASSIFICATION_MODELS, *(m for m in DETECTION_MODELS if m != "yolov5"), *SEGMENTATION_MODELS,
              "yolov5:small", "yolov5:medium", "yolov5:large", "yolov5:xlarge"]


def test_the_catalogue_covers_exactly_the_spec_models():
    assert len(CLASSIFICATION_MODELS) == 12
    assert sorted(catalogue.spec_model_names()) == sorted(SPEC_NAMES)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_model_resolves_to_a_source_and_a_check(name):
    f = catalogue.weights_file(name)
    assert f.code_licence and f.weights_licence
    assert {"mean", "std", "interpolation"} <= set(f.preprocessing)
    if f.library == "torchvision":
        assert re.fullmatch(r"https://download\.pytorch\.org/models/[\w.]+-[0-9a-f]{8,}\.pth", f.url)
        assert f.sha256_prefix and f.filename.endswith(f"-{f.sha256_prefix}.pth")
        assert f.code_licence == "BSD-3-Clause"
    elif f.library == "timm":
        arch = timm.models.get_pretrained_cfg(f.hub_id.split("/", 1)[1])
        assert f.hub_id == arch.hf_hub_id and f.hub_id.startswith("timm/")
        assert f.url == f"https://huggingface.co/{f.hub_id}/resolve/main/model.safetensors"
        assert f.weights_licence == arch.license and f.code_licence == "Apache-2.0"
        assert tuple(f.preprocessing["mean"]) == tuple(arch.mean)
    else:
        size = name.split(":")[1][0]
        assert f.url == f"https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov5{size}u.pt"
        assert f.library == "ultralytics" and f.code_licence.startswith("AGPL-3.0")


def test_torchvision_names_are_the_weights_enum_urls():
    assert catalogue.weights_file("resnet50").url == torchvision.models.ResNet50_Weights.DEFAULT.url
    assert catalogue.weights_file("maskrcnn_resnet50_fpn").url == \
        torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.DEFAULT.url
    assert catalogue.weights_file("fasterrcnn_resnet101_fpn").url == torchvision.models.ResNet101_Weights.DEFAULT.url


def test_base_urls_are_settings():
    env = {BASE_URL_ENV["torchvision"][0]: "http://proxy:8080/pt/", BASE_URL_ENV["timm"][0]: "http://hub.local",
           BASE_URL_ENV["ultralytics"][0]: "http://assets.local/v1"}
    assert catalogue.weights_file("resnet18").source_url(env) == "http://proxy:8080/pt/resnet18-f37072fd.pth"
    vit = catalogue.weights_file("vitb16r224")
    assert vit.source_url(env) == f"http://hub.local/{vit.hub_id}/resolve/main/model.safetensors"
    assert vit.source_url({"HF_ENDPOINT": "http://mirror.hf"}).startswith("http://mirror.hf/timm/")
    assert catalogue.weights_file("yolov5").source_url(env) == "http://assets.local/v1/yolov5mu.pt"


def test_unknown_name_lists_the_models():
    with pytest.raises(ConfigError, match="no pretrained weights known for 'resnet9'.*resnet18"):
        catalogue.weights_file("resnet9")


def test_the_models_a_job_needs():
    job = parse_job({"task": "image_object_detection", "training_data": "t.jsonl",
                     "search_space": [{"model_name": {"type": "choice", "values": ["yolov5"]},
                                       "model_size": {"type": "choice", "values": ["small", "large"]}},
                                      {"model_name": {"type": "choice", "values": ["fasterrcnn_resnet34_fpn"]}}]})
    assert catalogue.job_models(job) == ["yolov5:small", "yolov5:large", "fasterrcnn_resnet34_fpn"]
    plain = parse_job({"task": "image_classification", "training_data": "t.jsonl"})
    assert catalogue.job_models(plain) == ["vitb16r224"]
    scratch = parse_job({"task": "image_classification", "training_data": "t.jsonl",
                         "training_parameters": {"pretrained": 0}})
    assert catalogue.job_models(scratch) == []


def test_list_for_a_job_trained_from_scratch_says_it_needs_nothing(tmp_path, capsys):
    from automl_vision.cli import main

    job = tmp_path / "job.yaml"
    job.write_text("task: image_classification\ntraining_data: train.jsonl\n"
                   "training_parameters: {pretrained: 0, model_name: resnet18}\n")
    assert main(["weights", "list", "--job", str(job)]) == 0
    assert capsys.readouterr().out.strip() == (f"{job}: every model of this job trains from scratch (pretrained: 0): "
                                                "no pretrained weights needed")
