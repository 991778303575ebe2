"""The model package: a folder a trial writes (``outputs/``) and a run copies (``best_model/``).

    model.safetensors   the weights (tensors only: loading them runs no code); ``.pt``/``.pth`` files
                        saved as plain state dicts are read with ``torch.load(weights_only=True)``
    config.json         task, model_name, hyperparameters, num_classes, epoch
    labels.json         the class names, in the order of the model's outputs
    metrics.json        validation metrics of the saved epoch
    settings.json       inference settings (spec section 9), changeable at load time
    model.onnx          the ONNX export, kept only when it scored like the trained model (the gate)
    package.json        what the package holds with the SHA-256 of each file the model is loaded from
                        (weights, model.onnx, config.json, labels.json), the ONNX graph, the gate's
                        figures or why there is no export
    README.md           how to serve it

A trial writes the first four; ``serving/export.py``'s ``package_model`` adds the rest. The predictor
serves any folder with the first three (``settings.json`` absent: the trained values). Reading, the
hash checks against ``package.json`` and writing are ``models/package.py``'s (``settings.json`` is
meant to be edited and is not checked); this module adds the serving parts: reading a package for
serving, the classifier's ONNX export, the manifest's ONNX entry and the README.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from automl_vision.errors import ConfigError
from automl_vision.models.catalogue import licence_text
from automl_vision.models.package import (MANIFEST_FILE, ONNX_FILE, PackageContents, load_state_dict, read_json,
                                          read_package)
from automl_vision.serving.settings import SETTINGS_FILE, InferenceSettings, flatten, resolve_settings
from automl_vision.spec.catalogue import IMAGENET_MEAN, IMAGENET_STD
from automl_vision.spec.tasks import FIXED_SIZE_MODELS, ImageTask

log = logging.getLogger(__name__)

README_FILE = "README.md"
FORMAT_VERSION = 1

#: ONNX Runtime and PyTorch must agree on the logits within ``atol + rtol * max|logit|``.
ONNX_ATOL = 1e-3
ONNX_RTOL = 1e-3
ONNX_OPSET = 18


@dataclass(frozen=True)
class ModelPackage(PackageContents):
    """A model package as read from its folder for serving (nothing loaded onto a device yet)."""

    #: ``settings.json`` as a flat settings layer ({} when the folder has none).
    settings_layer: dict[str, Any] = field(default_factory=dict)
    #: ``package.json``'s description of ``model.onnx`` ({} without one): its inputs, outputs, the
    #: settings fixed in the graph, the checks it passed.
    onnx_info: dict[str, Any] = field(default_factory=dict)

    def settings(self, *layers: tuple[str, Mapping[str, Any]]) -> InferenceSettings:
        """The inference settings: trained values < settings.json < ``layers`` (lowest first)."""
        base = [(str(self.path / SETTINGS_FILE), self.settings_layer)] if self.settings_layer else []
        return resolve_settings(self.task, self.model_name, self.hyperparameters, base + list(layers))


def load_package(folder: str | Path, *, verify: bool = True) -> ModelPackage:
    """Read and check a package folder (``models.package.read_package``) with its ``settings.json``;
    raises ConfigError naming every problem. ``verify``: check the files the model is loaded from
    against ``package.json`` (off only for re-packaging)."""
    contents = read_package(folder, verify=verify)
    folder = contents.path
    layer = {}
    if (folder / SETTINGS_FILE).is_file():
        layer = flatten(read_json(folder / SETTINGS_FILE, "inference settings"), str(folder / SETTINGS_FILE))
    hyperparameters = dict(contents.hyperparameters)
    if isinstance(contents.config.get("preprocessing"), dict):  # what training normalized with (serving takes the same)
        hyperparameters["preprocessing"] = contents.config["preprocessing"]
    values = {f.name: getattr(contents, f.name) for f in fields(PackageContents)}
    onnx_info: dict[str, Any] = {}
    if contents.onnx is not None and (folder / MANIFEST_FILE).is_file():
        manifest = read_json(folder / MANIFEST_FILE, "package manifest")
        entry = manifest.get("onnx") if isinstance(manifest, dict) else None
        onnx_info = entry if isinstance(entry, dict) else {}
    return ModelPackage(**{**values, "hyperparameters": hyperparameters}, settings_layer=layer, onnx_info=onnx_info)


def build_torch_model(package: ModelPackage):
    """The package's network with its weights, in eval mode, on the CPU."""
    from automl_vision.models.registry import build_model  # torch and the model libraries: only to build one

    options: dict[str, Any] = {}
    if package.task.is_classification:
        if package.model_name in FIXED_SIZE_MODELS and "train_crop_size" in package.hyperparameters:
            options["image_size"] = package.hyperparameters["train_crop_size"]
    model = build_model(package.model_name, package.task, len(package.labels), pretrained=False, **options)
    state = load_state_dict(package.weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise ConfigError(f"{package.weights}: the weights do not fit {package.model_name} with "
                          f"{len(package.labels)} classes: {' '.join(x.strip() for x in first[:3])}") from None
    return model.eval()


# --- ONNX ------------------------------------------------------------------------------------------

def have_runtime(runtime: str = "onnx") -> bool:
    """Whether the package that runs ``model.onnx`` for ``runtime`` (onnx: onnxruntime; openvino) is installed."""
    return importlib.util.find_spec("openvino" if runtime == "openvino" else "onnxruntime") is not None


@dataclass
class OnnxExport:
    """What ``package.json`` says about the ONNX file."""

    file: str | None
    reason: str = ""
    max_abs_diff: float | None = None
    tolerance: float | None = None
    checked_shapes: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    dynamic_image_size: bool = False
    #: The manifest entry as an earlier packaging of the same weights wrote it (reused, not re-exported).
    manifest: dict | None = None
    #: A detector's graph: inputs, outputs, the settings fixed in it (``models/onnx_detectors.py``).
    description: dict | None = None
    #: The export gate's figures (``serving/export.py``).
    gate: dict | None = None

    def to_json(self, package: ModelPackage, settings: InferenceSettings) -> dict[str, Any]:
        if self.file is None:
            return {"file": None, "reason": self.reason, **({"gate": self.gate} if self.gate else {})}
        if self.description is not None:
            return {"file": self.file, **self.description, "gate": self.gate,
                    "export_seconds": round(self.seconds, 1)}
        crop = settings.model.get("valid_crop_size")
        hw = ["height", "width"] if self.dynamic_image_size else [crop, crop]
        multilabel = package.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
        return {
            "file": self.file, "opset": ONNX_OPSET,
            "input": {"name": "image", "dtype": "float32", "shape": ["batch", 3, *hw],
                      "preprocessing": {"resize_shorter_side": settings.model.get("valid_resize_size"),
                                        "center_crop": crop, "scale": "1/255",
                                        "mean": list(settings.get("mean", IMAGENET_MEAN)),
                                        "std": list(settings.get("std", IMAGENET_STD)),
                                        "interpolation": settings.get("interpolation", "bilinear"),
                                        "channels": "RGB"}},
            "output": {"name": "logits", "shape": ["batch", len(package.labels)],
                       "activation": "sigmoid" if multilabel else "softmax"},
            "checked_against_pytorch": {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                                        "input_shapes": self.checked_shapes},
            "gate": self.gate,
            "export_seconds": round(self.seconds, 1),
        }


def export_classifier_onnx(model, path: Path, crop: int, dynamic_image_size: bool) -> OnnxExport:
    """Export ``model`` (eval mode, CPU) to ``path`` with a dynamic batch (and image size where the
    architecture takes any), then check ONNX Runtime against PyTorch on random images; the file is
    removed when they disagree."""
    import onnxruntime as ort  # optional, and heavy: only to export
    import torch  # not at the top: reading a package needs no torch

    t0 = time.monotonic()
    sample = torch.randn(2, 3, crop, crop)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_image_size else {0: "batch"}
    # The exporter prints its progress on stdout; a run's output keeps only its own lines.
    with contextlib.redirect_stdout(io.StringIO()) as printed, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_shapes=(axes,), dynamo=True, external_data=False, opset_version=ONNX_OPSET)
    log.debug("torch.onnx.export: %s", printed.getvalue().strip())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = [(1, 3, crop, crop), (3, 3, crop, crop)]
    if dynamic_image_size:
        shapes.append((2, 3, crop + 32, crop + 16))
    worst, tolerance = 0.0, 0.0
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        allowed = ONNX_ATOL + ONNX_RTOL * float(np.abs(ref).max())
        worst, tolerance = max(worst, diff), max(tolerance, allowed)
        if not diff <= allowed:
            path.unlink(missing_ok=True)
            return OnnxExport(None, reason=f"ONNX Runtime and PyTorch disagree on input {list(shape)}: max "
                              f"|difference| of the logits {diff:.3g} > tolerance {allowed:.3g}",
                              max_abs_diff=diff, tolerance=allowed)
    return OnnxExport(ONNX_FILE, max_abs_diff=worst, tolerance=tolerance, checked_shapes=[list(s) for s in shapes],
                      seconds=time.monotonic() - t0, dynamic_image_size=dynamic_image_size)


def previous_onnx(folder: Path, digest: str, data: str | Path | None) -> OnnxExport | None:
    """The ONNX export already in ``folder`` (packaged before, e.g. by the sweep), if it is of these
    weights and was gated on the same validation data (or on none, when none is given now)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    entry = manifest.get("onnx") or {}
    if manifest.get("weights_sha256") != digest or not entry.get("file") or not (folder / ONNX_FILE).is_file():
        return None
    gate = entry.get("gate") or {}
    if not gate.get("passed") or gate.get("data") != (None if data is None else str(data)):
        return None
    check = entry.get("checked_against_pytorch") or {}
    return OnnxExport(entry["file"], max_abs_diff=check.get("max_abs_diff"), tolerance=check.get("tolerance"),
                      checked_shapes=check.get("input_shapes") or [], manifest=entry, gate=gate,
                      description=entry if "graph_settings" in entry else None)


def _licence_text(package: ModelPackage) -> str:
    """The licences of the model's code and of the pretrained weights it started from (the model catalogue)."""
    return licence_text(package.model_name, package.hyperparameters)


def readme(package: ModelPackage, settings: InferenceSettings, export: OnnxExport) -> str:
    """The package's README: what it holds and how to serve it."""
    task = package.task
    primary = task.primary_metric
    value = package.metrics.get(primary)
    metric = f"{primary} {value:.4f} on the validation data (epoch {package.epoch})" if isinstance(
        value, (int, float)) else "metrics: see metrics.json"
    if task.is_classification:
        answer = '[{"probs": [0.1, 0.9], "labels": ["%s", "%s"]}]' % (
            package.labels[0], package.labels[min(1, len(package.labels) - 1)])
    elif task is ImageTask.IMAGE_OBJECT_DETECTION:
        answer = ('[{"boxes": [{"box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.9}, '
                  '"label": "%s", "score": 0.93}]}]' % package.labels[0])
    else:
        answer = ('[{"boxes": [{"box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.9}, '
                  '"label": "%s", "score": 0.93, "polygon": [[0.1, 0.2, 0.5, 0.2, 0.5, 0.9]]}]}]' % package.labels[0])
    settings_lines = "\n".join(f"| `{k}` | `{json.dumps(v)}` |" for k, v in settings.to_json()["model_settings"].items())
    serving_lines = "\n".join(f"| `{k}` | `{json.dumps(v)}` |" for k, v in settings.serving().items())
    if export.file and export.description is not None:
        d = export.description
        outputs = ", ".join(f"`{k}` `{v}`" for k, v in d["outputs"].items())
        gate = export.gate or {}
        onnx_text = (f"`{ONNX_FILE}` (opset {d['opset']}) takes `images` (float32, `[batch, 3, height, width]`, RGB "
                     f"scaled to [0, 1]{', letterboxed to img_size' if 'stride' in d else ''}) and returns {outputs}. "
                     + (f"Fixed in the graph: {json.dumps(d['graph_settings'])} (box_score_thresh may be raised "
                        "and box_detections_per_img lowered when loading; other changes are served with PyTorch). "
                        if d.get("graph_settings") else "Score threshold, NMS and scaling back are applied outside "
                        "the graph (ultralytics' functions), so every setting applies. ")
                     + f"Checked against PyTorch: {gate.get('reason', 'not checked')}.")
    elif export.file:
        onnx_text = (f"`{ONNX_FILE}` takes `image` (float32, `[batch, 3, H, W]`, RGB scaled to [0, 1] then "
                     f"normalized with mean {list(settings.get('mean', IMAGENET_MEAN))} and std "
                     f"{list(settings.get('std', IMAGENET_STD))}, after resizing ({settings.get('interpolation', 'bilinear')}) "
                     f"the shorter side to {settings.get('valid_resize_size')} and centre-cropping "
                     f"{settings.get('valid_crop_size')}) and returns `logits` (`[batch, {len(package.labels)}]`; "
                     f"apply {'a sigmoid' if task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL else 'a softmax'}). "
                     f"Checked against PyTorch: max |difference| {export.max_abs_diff:.2g} "
                     f"(tolerance {export.tolerance:.2g})"
                     + (f"; {export.gate['reason']}." if export.gate else "."))
    else:
        onnx_text = f"No ONNX export: {export.reason}."
    return f"""# {package.model_name} for {task.value}

{len(package.labels)} classes: {', '.join(package.labels[:20])}{' ...' if len(package.labels) > 20 else ''}.
{metric[0].upper() + metric[1:]}.

| file | what |
|---|---|
| `{package.weights.name}` | the weights (safetensors: loading runs no code) |
| `config.json` | task, model_name, hyperparameters of the trial |
| `labels.json` | class names in the order of the model's outputs |
| `settings.json` | inference settings, changeable when the model is loaded |
| `metrics.json` | validation metrics of the saved epoch |
| `{ONNX_FILE}` | {'the ONNX export' if export.file else 'absent (see below)'} |
| `package.json` | the package's contents and the ONNX check |

## Serve it

```bash
automl-vision serve --model . --port 8080
curl -s localhost:8080/v1/models/model:predict -H 'Content-Type: application/json' \\
  -d '{{"input_data": {{"columns": ["image"], "data": ["'"$(base64 -w0 image.jpg)"'"]}}}}'
```

The answer has one entry per image: `{answer}`. The same body is accepted on `POST /score`.
Also accepted: the raw image bytes (`Content-Type: image/jpeg`), KServe v1
`{{"instances": [{{"image": {{"b64": "..."}}}}]}}`, and the Open Inference Protocol v2 on
`/v2/models/model/infer` (one `BYTES` input of base64 images, or `UINT8` pixels `[N, H, W, 3]`).
Concurrent requests are batched. Bad input gets a 400 with a message.

## Settings

Change them without retraining: `--settings FILE` (a JSON object) or the environment variable
`AUTOML_VISION_SETTINGS` (a JSON object or a file path); `--settings` wins.

| model setting | value |
|---|---|
{settings_lines}

| serving setting | value |
|---|---|
{serving_lines}

## Batch scoring and evaluation

```bash
automl-vision predict --model . images/ --out predictions.jsonl
automl-vision evaluate --model . --data test.jsonl --output-dir evaluation/
```

## ONNX

{onnx_text}

## Licences

{_licence_text(package)}

## KServe

Run the image with `automl-vision serve --model /mnt/models --port 8080` as the predictor
container of an InferenceService, with this folder as its storage URI.
"""
