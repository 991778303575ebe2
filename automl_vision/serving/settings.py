"""Inference settings of a model package (spec section 9), changeable at load time without retraining.

Two groups, one flat namespace:

* model settings, the product's own names: classification ``valid_resize_size``,
  ``valid_crop_size``; detection and segmentation ``min_size``, ``max_size``, ``box_score_thresh``,
  ``box_nms_thresh``, ``box_detections_per_img``, the tiling settings; yolov5 ``img_size``,
  ``model_size``, ``box_score_thresh``, ``box_iou_thresh``; segmentation adds
  ``mask_pixel_score_threshold`` and ``max_number_of_polygon_points``. They are rows of the
  hyperparameter table, checked by the same rules as in training.
* serving settings, ours: ``max_batch_size``, ``max_batch_latency_ms``, ``max_image_pixels``,
  ``max_aspect_ratio``, ``max_request_bytes``, ``request_timeout_s``, ``runtime``, the explanation
  limits ``explain_max_images``, ``explain_max_steps``, ``explain_max_masks``, and ``device``.

Precedence, lowest first: the trained values (the package's ``config.json``) < the package's
``settings.json`` < the ``AUTOML_VISION_SETTINGS`` environment variable (read by the CLI) <
``--settings FILE``. Every layer is a JSON object, flat or nested as ``settings.json`` writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl_vision.data.images import DEFAULT_MAX_PIXELS
from automl_vision.errors import ConfigError
from automl_vision.models.catalogue import preprocessing
from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.tasks import ImageTask

SETTINGS_FILE = "settings.json"
SETTINGS_ENV = "AUTOML_VISION_SETTINGS"

#: Hyperparameters that are inference settings (spec section 9); which apply depends on task and model.
MODEL_SETTING_NAMES = (
    "valid_resize_size",
    "valid_crop_size",
    "min_size",
    "max_size",
    "box_score_thresh",
    "box_nms_thresh",
    "box_detections_per_img",
    "tile_grid_size",
    "tile_overlap_ratio",
    "tile_predictions_nms_thresh",
    "img_size",
    "model_size",
    "box_iou_thresh",
    "mask_pixel_score_threshold",
    "max_number_of_polygon_points",
)
#: Settings fixed by the trained weights: shown in settings.json, never changeable.
FIXED_BY_WEIGHTS = ("model_size",)
#: Classification preprocessing: the statistics and resampling of the weights the model started from
#: (the pretrained file's own, ImageNet's from scratch), recorded by training in config.json
#: ("preprocessing") and carried in settings.json so that serving normalizes as training did.
PREPROCESSING_NAMES = ("mean", "std", "interpolation")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def trained_preprocessing(model_name: str, trained: Mapping[str, Any]) -> dict[str, Any]:
    """mean, std and interpolation a classifier was trained with: as recorded, else from its weights' metadata."""
    recorded = trained.get("preprocessing")
    if isinstance(recorded, Mapping) and all(k in recorded for k in PREPROCESSING_NAMES):
        return {k: recorded[k] for k in PREPROCESSING_NAMES}
    return preprocessing(model_name, bool(trained.get("pretrained")))


def _check_preprocessing(key: str, value: Any) -> str | None:
    if key == "interpolation":
        return None if value in _INTERPOLATIONS else f"interpolation={value!r}; allowed: {', '.join(_INTERPOLATIONS)}"
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or (key == "std" and min(value) <= 0):
        return f"{key}={value!r}: expected three numbers (RGB){', above 0' if key == 'std' else ''}"
    return None

_RUNTIMES = ("auto", "pytorch", "onnx", "openvino")
#: max_batch_size when unset. On the CPU batching pays only when requests overlap (1.1-1.5x throughput
#: with 8-32 clients) and costs a lone client the batch wait (benchmarks/serve_latency.py); GPUs batch well.
CPU_BATCH, GPU_BATCH = 1, 16
#: A 4:1 panorama is ordinary, 20:1 is a strip of pixels rather than a photo.
DEFAULT_MAX_ASPECT_RATIO = 20.0
#: 64 MiB: several large photos as base64 (which adds a third) in one request.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 30.0

SERVING_SETTINGS: tuple[hps.HyperParameter, ...] = (
    hps.HyperParameter("max_batch_size", int, "Most images one forward pass takes; concurrent requests are "
                       "batched up to this. Unset: 16 on a GPU, 1 on the CPU (where batching gains throughput only "
                       "under many concurrent clients: set 8 there).", None, minimum=1,
                       maximum=1024, optional=True, origin="extension"),
    hps.HyperParameter("max_batch_latency_ms", float, "How long the first request of a batch waits for others "
                       "to join it.", 5.0, minimum=0.0, maximum=10_000.0, origin="extension"),
    hps.HyperParameter("max_image_pixels", int, "Images with more pixels (width x height) are refused.",
                       DEFAULT_MAX_PIXELS, minimum=1, origin="extension"),
    hps.HyperParameter("max_aspect_ratio", float, "Images whose longer side is more than this many times their "
                       "shorter side are refused (a thin image blows up when resized for the model).",
                       DEFAULT_MAX_ASPECT_RATIO, minimum=1.0, maximum=1e6, origin="extension"),
    hps.HyperParameter("max_request_bytes", int, "Request bodies larger than this are refused (413) before "
                       "they are read in full.", DEFAULT_MAX_REQUEST_BYTES, minimum=1024, origin="extension"),
    hps.HyperParameter("request_timeout_s", float, "A client must send its whole request body within this "
                       "many seconds, else it gets a 408 and the connection is closed (slow clients).",
                       DEFAULT_REQUEST_TIMEOUT_S, minimum=0.1, maximum=3600.0, origin="extension"),
    hps.HyperParameter("runtime", str, "auto, pytorch, onnx (ONNX Runtime on the CPU, with the package's "
                       "model.onnx, which packaging keeps only when it scores the validation data like the trained "
                       "model) or openvino (OpenVINO on the CPU with the same model.onnx; the openvino extra). "
                       "auto: ONNX Runtime on the CPU when the package has model.onnx and, for a detector, the "
                       "settings fixed in its graph are unchanged; else PyTorch.", "auto", choices=_RUNTIMES,
                       origin="extension"),
    hps.HyperParameter("explain_max_images", int, "Most images of one request that may ask for an explanation "
                       "(model_explainability); more is a 400. 0 turns explanations off.", 4, minimum=0,
                       maximum=1024, origin="extension"),
    hps.HyperParameter("explain_max_steps", int, "Most n_steps a request may ask of xrai and integrated_gradients "
                       "(xrai runs twice that many forward and backward passes per explained class); more is a 400.",
                       200, minimum=2, maximum=1000, origin="extension"),
    hps.HyperParameter("explain_max_masks", int, "Most num_masks a request may ask of d_rise (one detector pass "
                       "per mask: 1000 masks take about 20 s on a GPU, many minutes on a CPU); more is a 400.", 1000,
                       minimum=1, maximum=20000, origin="extension"),
    hps.HyperParameter("device", str, "auto, cpu, cuda or cuda:N.", "auto", origin="extension",
                       check=lambda v, _m: None if v in ("auto", "cpu", "cuda") or
                       (v.startswith("cuda:") and v[5:].isdigit()) else "expected auto, cpu, cuda or cuda:N"),
)
_SERVING = {hp.name: hp for hp in SERVING_SETTINGS}


@dataclass(frozen=True)
class InferenceSettings:
    """Resolved, checked settings of one loaded model."""

    task: ImageTask
    model_name: str
    model: Mapping[str, Any]  # the applicable model settings, every one present
    max_batch_size: int | None = None  # None: batch_size_for(device)
    max_batch_latency_ms: float = 5.0
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    runtime: str = "auto"
    explain_max_images: int = 4
    explain_max_steps: int = 200
    explain_max_masks: int = 1000
    device: str = "auto"
    #: Where each value that differs from training came from, for the log.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __getitem__(self, name: str) -> Any:
        return self.model[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.model.get(name, default)

    def serving(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SERVING}

    def image_limits(self) -> dict[str, Any]:
        """The size checks of :func:`automl_vision.serving.images.decode_image` for this model: the
        pixel limit applies to the image as sent and, for classification (which resizes the shorter
        side to ``valid_resize_size``), to the resized image too."""
        shorter = self.model.get("valid_resize_size") if self.task.is_classification else None
        return {"max_pixels": self.max_image_pixels, "shorter_side": shorter,
                "max_aspect_ratio": self.max_aspect_ratio}

    def batch_size_for(self, device: str) -> int:
        """``max_batch_size``, or when unset the default for the device the model runs on."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return GPU_BATCH if device.startswith("cuda") else CPU_BATCH

    def to_json(self) -> dict[str, Any]:
        """The ``settings.json`` layout."""
        out = {"task": self.task.value, "model_name": self.model_name,
               "model_settings": {k: v for k, v in self.model.items() if k not in PREPROCESSING_NAMES},
               "serving": self.serving()}
        if any(k in self.model for k in PREPROCESSING_NAMES):
            out["preprocessing"] = {k: self.model[k] for k in PREPROCESSING_NAMES if k in self.model}
        return out


def applicable_model_settings(task: ImageTask, model_name: str) -> list[str]:
    return [n for n in MODEL_SETTING_NAMES if hps.get(n).applies_to(task, model_name)]


def flatten(layer: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A settings layer as one flat mapping; ``settings.json``'s nesting is accepted."""
    if not isinstance(layer, Mapping):
        raise ConfigError(f"settings must be a JSON object, got {type(layer).__name__}", source)
    flat: dict[str, Any] = {}
    for key, value in layer.items():
        if key in ("model_settings", "serving", "preprocessing"):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a JSON object, got {type(value).__name__}", source)
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read_settings_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"settings file not found: {path}")
    try:
        return flatten(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", str(path)) from None


def parse_settings_text(text: str, source: str) -> dict[str, Any]:
    """A layer given as text (an environment variable): a JSON object, or the path of a JSON file."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            return flatten(json.loads(text), source)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not valid JSON ({e.msg} at column {e.colno})", source) from None
    return read_settings_file(text)


def resolve_settings(task: ImageTask, model_name: str, trained: Mapping[str, Any],
                     layers: list[tuple[str, Mapping[str, Any]]]) -> InferenceSettings:
    """The settings for a model trained with hyperparameters ``trained``, overlaid by ``layers``
    (``(source, flat mapping)`` pairs, lowest precedence first). Every problem is collected."""
    names = applicable_model_settings(task, model_name)
    model: dict[str, Any] = {}
    for n in names:
        model[n] = trained[n] if n in trained else hps.get(n).default_for(task, model_name)
    if task.is_classification:
        model.update(trained_preprocessing(model_name, trained))
    serving = {hp.name: hp.default for hp in SERVING_SETTINGS}
    sources: dict[str, str] = {}
    problems: list[str] = []
    valid = names + list(_SERVING) + ["task", "model_name"]
    for source, layer in layers:
        for key, raw in layer.items():
            where = f"{source}: " if source else ""
            if key in ("task", "model_name"):
                expected = task.value if key == "task" else model_name
                if raw != expected:
                    problems.append(f"{where}{key}={raw!r} but the model is {expected!r}")
                continue
            if key in _SERVING:
                try:
                    value = _SERVING[key].coerce(raw)
                except ValueError as e:
                    problems.append(f"{where}{e}")
                    continue
                if value != serving[key]:
                    serving[key] = value
                    sources[key] = source
                continue
            if key in PREPROCESSING_NAMES and task.is_classification:
                problem = _check_preprocessing(key, raw)
                if problem:
                    problems.append(f"{where}{problem}")
                else:
                    value = raw if key == "interpolation" else [float(v) for v in raw]
                    if value != model[key]:
                        model[key] = value
                        sources[key] = source
                continue
            if key not in names:
                if key in hps.BY_NAME and key in MODEL_SETTING_NAMES:
                    problems.append(f"{where}{hps.why_not(hps.get(key), task, model_name)}")
                elif key in hps.BY_NAME:
                    problems.append(f"{where}{key} is a training hyperparameter, not an inference setting; "
                                    f"inference settings here: {', '.join(names + list(_SERVING))}")
                else:
                    problems.append(f"{where}unknown setting {key!r}{hps.did_you_mean(key, valid)}; "
                                    f"allowed: {', '.join(names + list(_SERVING))}")
                continue
            try:
                value = hps.get(key).coerce(raw, model_name)
            except ValueError as e:
                problems.append(f"{where}{e}")
                continue
            if key in FIXED_BY_WEIGHTS and value != model[key]:
                problems.append(f"{where}{key}={value!r}: fixed by the trained weights ({model[key]!r})")
                continue
            if value != model[key]:
                model[key] = value
                sources[key] = source
    if not problems:
        for problem in hps.cross_checks(task, {"model_name": model_name, **trained, **model}):
            named = [f"{k} from {v}" for k, v in sources.items() if k in problem]
            problems.append(problem + (f" ({', '.join(named)})" if named else ""))
    if problems:
        raise ConfigError(problems, "inference settings")
    return InferenceSettings(task=task, model_name=model_name, model=model, sources=sources, **serving)
