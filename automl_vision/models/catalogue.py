"""The pretrained weights of the catalogue's models (``spec/catalogue.py``): file, source, licences, preprocessing.

Resolution never touches the network: names, addresses and hashes come from the installed libraries
(torchvision's weights enums, timm's pretrained cfgs, ultralytics' release assets).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from automl_vision.errors import ConfigError
from automl_vision.models.weights import BASE_URL_ENV, WeightsFile
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.catalogue import CLASSIFICATION, IMAGENET, MODELS, ModelRow
from automl_vision.spec.distributions import Choice
from automl_vision.spec.tasks import ImageTask


def default_model_size() -> str:
    return hps.get("model_size").default


def spec_model_names() -> list[str]:
    """Every model name of the spec, a model with sizes once per model_size (``yolov5:small`` ...)."""
    names: list[str] = []
    for task in ImageTask:
        for name in task.models:
            sized = [f"{name}:{size}" for size in MODELS[name].sizes] or [name]
            names += [n for n in sized if n not in names]
    return names


def torchvision_weights(row: ModelRow):
    """The default member of the row's torchvision weights enum (``ResNet18_Weights.DEFAULT``)."""
    module, _, enum = row.weights.rpartition(".")
    return getattr(importlib.import_module(module), enum).DEFAULT


def _torchvision_file(row: ModelRow) -> WeightsFile:
    weights = torchvision_weights(row)
    pre = row.preprocessing.to_json()
    if set(row.tasks) <= set(CLASSIFICATION):  # classifiers: the weights' own transforms
        tf = weights.transforms()
        pre = {"mean": list(tf.mean), "std": list(tf.std), "interpolation": tf.interpolation.value,
               "input_size": [3, *tf.crop_size * 2][:3], "resize_size": tf.resize_size[0]}
    # The detectors normalize inside the model (GeneralizedRCNNTransform, ImageNet statistics).
    return WeightsFile(row.name, os.path.basename(weights.url), weights.url, row.family,
                       code_licence=row.code_licence, weights_licence=row.weights_licence, preprocessing=pre)


def _timm_file(row: ModelRow) -> WeightsFile:
    import timm  # optional heavy dependency, imported when a timm model's weights are asked for

    cfg = timm.models.get_pretrained_cfg(row.weights)
    hub = getattr(cfg, "hf_hub_id", None) or f"timm/{row.weights}"
    pre = {**row.preprocessing.to_json(), "mean": list(cfg.mean), "std": list(cfg.std),
           "interpolation": cfg.interpolation or "bilinear", "input_size": list(cfg.input_size),
           "crop_pct": cfg.crop_pct}
    return WeightsFile(row.name, f"{hub}/model.safetensors",
                       f"https://huggingface.co/{hub}/resolve/main/model.safetensors", row.family, hub,
                       code_licence=row.code_licence,
                       weights_licence=row.weights_licence or cfg.license or "not stated in the pretrained cfg",
                       preprocessing=pre)


def sized_name(row: ModelRow, pattern: str, model_size: str) -> str:
    """``pattern`` (the row's ``arch`` or ``weights``) for ``model_size``: ``yolov5{}u`` -> ``yolov5mu``."""
    try:
        return pattern.format(row.sizes[model_size])
    except KeyError:
        raise ConfigError(f"model_size={model_size!r}; allowed: {', '.join(row.sizes)}") from None


def _ultralytics_file(row: ModelRow, model_size: str) -> WeightsFile:
    """ultralytics' COCO checkpoint (a release asset of ultralytics/assets, the tag ultralytics' own
    ``attempt_download_asset`` uses), cached beside torchvision's checkpoints
    (``$TORCH_HOME/hub/checkpoints/``) or read from a mirror. ultralytics scales pixels to [0, 1] and
    does not normalize further; letterbox resizing."""
    name = sized_name(row, row.weights, model_size)
    return WeightsFile(f"{row.name} (model_size {model_size})", name, f"{BASE_URL_ENV['ultralytics'][1]}/{name}",
                       row.family, code_licence=row.code_licence, weights_licence=row.weights_licence,
                       preprocessing=row.preprocessing.to_json())


def weights_file(name: str) -> WeightsFile:
    """``name``: a model name, or ``<model>:<model_size>`` for a model with sizes (``yolov5:small``;
    ``yolov5`` alone is the default size)."""
    model, _, size = name.partition(":")
    row = MODELS.get(model)
    if row is None or bool(size) and not row.sizes:
        raise ConfigError(f"no pretrained weights known for {name!r}; models: {', '.join(spec_model_names())}")
    if row.family == "ultralytics":
        return _ultralytics_file(row, size or default_model_size())
    if row.family == "timm":
        return _timm_file(row)
    return _torchvision_file(row)


def resolve(names: Iterable[str]) -> list[WeightsFile]:
    return [weights_file(n) for n in names]


def preprocessing(model_name: str, pretrained: bool) -> dict:
    """mean, std and interpolation the model expects: its weights' own when pretrained, the row's otherwise."""
    row = MODELS.get(model_name)
    if row is None:
        return IMAGENET.to_json()
    if not pretrained:
        return row.preprocessing.to_json()
    pre = weights_file(model_name).preprocessing
    return {"mean": list(pre["mean"]), "std": list(pre["std"]), "interpolation": pre["interpolation"]}


def job_models(job) -> list[str]:
    """The catalogue names a job's trials may need pretrained weights for (none when pretrained is 0)."""
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
            if model in MODELS and MODELS[model].sizes:
                size = entry.get("model_size", fixed.get("model_size", default_model_size()))
                sizes = [str(v) for v in size.values] if isinstance(size, Choice) else [str(size)]
                names += [f"{model}:{s}" for s in sizes if f"{model}:{s}" not in names]
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
    if model_name in MODELS and MODELS[model_name].sizes:
        name = f"{model_name}:{hyperparameters.get('model_size', default_model_size())}"
    try:
        f = weights_file(name)
    except Exception:  # a model outside the catalogue: nothing known to state
        return "Not recorded for this model."
    started = (f"It was fine-tuned from the pretrained weights `{f.relpath}` ({f.url}), licence: "
               f"{f.weights_licence}." if hyperparameters.get("pretrained") else
               "It was trained from random initialization (no pretrained weights).")
    return f"Model code: {f.library}, licence {f.code_licence}. {started}"
