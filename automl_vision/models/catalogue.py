"""The pretrained-weights catalogue: every model name of the spec -> its file, source, licences, preprocessing.

Licences as the upstream projects state them:

* torchvision's code is BSD-3-Clause. torchvision states no licence of its own for its pretrained
  weights; its documentation warns that they were trained on datasets with their own terms
  (ImageNet-1k for the classifiers and backbones, COCO for the detectors), so the catalogue says so.
* timm's code is Apache-2.0; each pretrained cfg carries the licence of its weights (``license``).
* ultralytics' code and its released weights are AGPL-3.0 (or an Ultralytics Enterprise licence).

Resolution never touches the network: names, addresses and hashes come from the installed libraries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from automl_vision.errors import ConfigError
from automl_vision.models.weights import WeightsFile

TORCHVISION_CODE = "BSD-3-Clause"
TORCHVISION_IMAGENET = "not stated by torchvision (trained on ImageNet-1k; the dataset's terms of access apply)"
TORCHVISION_COCO = "not stated by torchvision (trained on COCO; its images carry their own licences)"
TIMM_CODE = "Apache-2.0"
ULTRALYTICS = "AGPL-3.0 (or an Ultralytics Enterprise licence)"
#: ImageNet statistics: the preprocessing of models trained from scratch and of the torchvision weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def from_scratch_preprocessing() -> dict:
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear"}


def spec_model_names() -> list[str]:
    """Every model name of the spec, yolov5 once per model_size (``yolov5:small`` ...)."""
    from automl_vision.spec.tasks import ImageTask
    from automl_vision.models.registry import registered_models
    from automl_vision.models.yolo import SIZES

    names: list[str] = []
    for task in ImageTask:
        for name in registered_models(task):
            if name == "yolov5":
                names += [f"yolov5:{size}" for size in SIZES if f"yolov5:{size}" not in names]
            elif name not in names:
                names.append(name)
    return names


def weights_file(name: str) -> WeightsFile:
    """``name``: a model name, or ``yolov5:<model_size>`` (``yolov5`` alone is the default size, medium)."""
    from automl_vision.models import classification, detection, yolo

    if name == "yolov5" or name.startswith("yolov5:"):
        return yolo.weights_file(name.partition(":")[2] or "medium")
    if name in classification.CLASSIFIERS:
        return classification.weights_file(name)
    try:
        detection.family_of(name)
    except ValueError:
        pass
    else:
        from automl_vision.models.registry import _REGISTRY, _load_backends

        _load_backends()
        if name in _REGISTRY:
            return detection.weights_file(name)
    raise ConfigError(f"no pretrained weights known for {name!r}; models: {', '.join(spec_model_names())}")


def resolve(names: Iterable[str]) -> list[WeightsFile]:
    return [weights_file(n) for n in names]


def job_models(job) -> list[str]:
    """The catalogue names a job's trials may need pretrained weights for (none when pretrained is 0)."""
    from automl_vision.spec.distributions import Choice

    fixed = job.training_parameters
    if "pretrained" in fixed and not fixed["pretrained"]:
        return []
    names: list[str] = []
    for entry in job.search_space or [{}]:
        pretrained = entry.get("pretrained")
        if pretrained is not None and not isinstance(pretrained, Choice) and not pretrained:
            continue
        models = entry.get("model_name", fixed.get("model_name", job.task.default_model))
        models = [str(v) for v in models.values] if isinstance(models, Choice) else [str(models)]
        for model in models:
            if model == "yolov5":
                size = entry.get("model_size", fixed.get("model_size", "medium"))
                sizes = [str(v) for v in size.values] if isinstance(size, Choice) else [str(size)]
                for s in sizes:
                    if f"yolov5:{s}" not in names:
                        names.append(f"yolov5:{s}")
            elif model not in names:
                names.append(model)
    return names


def table(files: Sequence[WeightsFile]) -> list[dict]:
    return [{"model": f.model_name, "library": f.library, "file": f.relpath, "source": f.url,
             "code_licence": f.code_licence, "weights_licence": f.weights_licence} for f in files]


def licence_text(model_name: str, hyperparameters: Mapping[str, Any]) -> str:
    """In words: the licence of the model's code and of the pretrained weights it started from (what the
    model package's README and the run report say)."""
    name = model_name
    if name == "yolov5":
        name = f"yolov5:{hyperparameters.get('model_size', 'medium')}"
    try:
        f = weights_file(name)
    except Exception:  # a model outside the catalogue: nothing known to state
        return "Not recorded for this model."
    started = (f"It was fine-tuned from the pretrained weights `{f.relpath}` ({f.url}), licence: "
               f"{f.weights_licence}." if hyperparameters.get("pretrained") else
               "It was trained from random initialization (no pretrained weights).")
    return f"Model code: {f.library}, licence {f.code_licence}. {started}"
