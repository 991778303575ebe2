"""Packaging a trial's model for serving, with an ONNX export that has to earn its place.

:func:`package_model` copies the trial's files, writes ``settings.json``, exports ``model.onnx`` and
then gates it: the exported model and the trained one score the same images (the validation data when
packaging has it, else a few synthetic images) through the serving engines, so pre- and
post-processing are those a served model runs. The export is kept only when

* every image's answers agree within the tolerances below (probabilities; boxes paired by label and
  IoU, their scores, masks), and
* with validation data, the task's primary metric of the two differs by at most ``margin_points``
  (percentage points, default 0.5).

Otherwise ``model.onnx`` is left out, the model is served with PyTorch, and ``package.json`` and the
README say why with both figures. ``package.json`` records the gate either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from automl_vision import __version__
from automl_vision.data.load import first_lines_jsonl
from automl_vision.errors import AutoMLError
from automl_vision.evaluation.detection_metrics import score_predictions
from automl_vision.evaluation.scoring import score_classification
from automl_vision.models.detection import load_detector
from automl_vision.models.masks import polygon_to_mask
from automl_vision.models.onnx_detectors import export_torchvision_detector, export_yolo
from automl_vision.models.yolo import load_yolo
from automl_vision.models.package import (CONFIG_FILE, LABELS_FILE, MANIFEST_FILE, METRICS_FILE, ONNX_FILE,
                                          atomic_copy, atomic_write, file_hashes, sha256_of)
from automl_vision.serving.batch import predict_batch
from automl_vision.serving.engine import Engine, load_engine
from automl_vision.serving.package import (FORMAT_VERSION, README_FILE, ModelPackage, OnnxExport, build_torch_model,
                                           export_classifier_onnx, load_package, previous_onnx, readme)
from automl_vision.serving.settings import SETTINGS_FILE, InferenceSettings
from automl_vision.spec.tasks import FIXED_SIZE_MODELS, YOLO_MODELS, ImageTask

log = logging.getLogger(__name__)

#: Validation images the gate scores with both runtimes (the first ones of the file).
GATE_MAX_IMAGES = 100
#: The most the primary metric may move, in percentage points, for the export to be kept.
GATE_MARGIN_POINTS = 0.5
#: Per-image tolerances between ONNX Runtime's and PyTorch's answers.
PROB_ATOL = 1e-3  # each class probability
BOX_MIN_IOU = 0.98  # a box and its counterpart (same label)
SCORE_ATOL = 0.01  # their scores; a box this close to the score threshold (or to the last kept score
#                    when the detection cap is reached) may be on one side only
MASK_MIN_IOU = 0.9  # their masks, rasterized from the answers' polygons
#: Two overlapping boxes of one label whose scores are this close are a tie that NMS may break either way
#: (float rounding): the survivor may differ between runtimes.
TIE_ATOL = 1e-4
_MASK_RASTER = 256  # polygons are normalized: compared on a square of this many pixels
_SYNTHETIC_SIZES = ((96, 80), (128, 128), (80, 112), (96, 80))


# --- export ----------------------------------------------------------------------------------------

def _export_detector(package: ModelPackage, settings: InferenceSettings, path: Path) -> OnnxExport:
    t0 = time.monotonic()
    overrides = dict(settings.model)
    if package.model_name in YOLO_MODELS:
        description = export_yolo(load_yolo(package.path, "cpu", overrides=overrides).model, path)
    else:
        loaded = load_detector(package.path, "cpu", overrides=overrides)
        description = export_torchvision_detector(loaded.model, path, loaded.settings.to_json(),
                                                  with_masks=package.task is ImageTask.IMAGE_INSTANCE_SEGMENTATION)
    return OnnxExport(ONNX_FILE, seconds=time.monotonic() - t0, description=description)


def _export(package: ModelPackage, settings: InferenceSettings, path: Path) -> OnnxExport:
    """Export the package's model to ``path``; an export that fails says which model and why."""
    try:
        if package.task.is_classification:
            return export_classifier_onnx(build_torch_model(package), path, settings["valid_crop_size"],
                                          dynamic_image_size=package.model_name not in FIXED_SIZE_MODELS)
        return _export_detector(package, settings, path)
    except Exception as e:  # the exporter's failures are many and untyped; the package says which
        path.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return OnnxExport(None, reason=f"torch.onnx.export failed for {package.model_name}: "
                                       f"{type(e).__name__}: {first[:300]}; served with PyTorch")


# --- the gate --------------------------------------------------------------------------------------

@dataclass
class GateResult:
    """How the exported model compared with the trained one."""

    passed: bool
    reason: str
    data: str | None  # the labelled JSONL scored; None: synthetic images
    images: int
    metric: str | None = None
    pytorch: float | None = None
    onnx: float | None = None
    margin_points: float = GATE_MARGIN_POINTS
    #: The largest differences seen over all images.
    worst: dict[str, float] = field(default_factory=dict)
    #: Images whose answers differ beyond the tolerances, with what differs (the first ones).
    failed_images: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def delta_points(self) -> float | None:
        if self.pytorch is None or self.onnx is None:
            return None
        return 100.0 * (self.onnx - self.pytorch)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "data": self.data, "images": self.images,
                "metric": self.metric, "pytorch": self.pytorch, "onnx": self.onnx,
                "delta_points": None if self.delta_points is None else round(self.delta_points, 4),
                "margin_points": self.margin_points,
                "tolerances": {"probability": PROB_ATOL, "box_iou": BOX_MIN_IOU, "score": SCORE_ATOL,
                               "mask_iou": MASK_MIN_IOU},
                "worst": {k: round(v, 6) for k, v in self.worst.items()},
                "failed_images": self.failed_images[:10], "seconds": round(self.seconds, 1)}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else float(np.allclose(a, b))


def _mask_iou(a: list, b: list) -> float:
    ma = polygon_to_mask(a, _MASK_RASTER, _MASK_RASTER)
    mb = polygon_to_mask(b, _MASK_RASTER, _MASK_RASTER)
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 1.0


def compare_answers(reference: Mapping[str, Any], exported: Mapping[str, Any], *, score_thresh: float = 0.0,
                    cap: int | None = None, worst: dict[str, float] | None = None) -> list[str]:
    """What differs beyond the tolerances between two answers for one image (scoring format); ``worst``
    collects the largest differences. ``score_thresh`` and ``cap``: the detector's score threshold and
    detections per image, near which a box may be on one side only."""
    worst = worst if worst is not None else {}
    if "probs" in reference:
        diff = float(np.abs(np.asarray(reference["probs"]) - np.asarray(exported["probs"])).max())
        worst["probability"] = max(worst.get("probability", 0.0), diff)
        return [f"probabilities differ by {diff:.3g} > {PROB_ATOL}"] if diff > PROB_ATOL else []
    sides = [[(np.array([d["box"][k] for k in ("topX", "topY", "bottomX", "bottomY")]), d["label"], d["score"],
               d.get("polygon")) for d in answer.get("boxes", [])] for answer in (reference, exported)]
    problems: list[str] = []
    # Pair boxes of one label, the closest pairs first (a box's own counterpart is all but identical).
    candidates = sorted(((_iou(a[0], b[0]), i, j) for i, a in enumerate(sides[0]) for j, b in enumerate(sides[1])
                         if a[1] == b[1]), reverse=True)
    pairs: dict[int, tuple[int, float]] = {}
    used: set[int] = set()
    for iou, i, j in candidates:
        if iou >= 0.5 and i not in pairs and j not in used:
            pairs[i] = (j, iou)
            used.add(j)
    unpaired: list[list] = [[a for i, a in enumerate(sides[0]) if i not in pairs], []]
    worst["unpaired_boxes"] = worst.get("unpaired_boxes", 0.0) + len(unpaired[0]) + len(sides[1]) - len(used)
    for i, (j, best_iou) in sorted(pairs.items()):
        a, b = sides[0][i], sides[1][j]
        score = abs(a[2] - b[2])
        if best_iou < BOX_MIN_IOU:
            if score <= TIE_ATOL:  # NMS kept the other of two tied boxes
                worst["nms_ties"] = worst.get("nms_ties", 0.0) + 1
            else:  # not each other's counterpart: each is judged as a box on one side only
                unpaired[0].append(a)
                unpaired[1].append(b)
                worst["unpaired_boxes"] = worst.get("unpaired_boxes", 0.0) + 2
            continue
        worst["box_iou"] = min(worst.get("box_iou", 1.0), best_iou)
        worst["score"] = max(worst.get("score", 0.0), score)
        if score > SCORE_ATOL:
            problems.append(f"a {a[1]} box's score differs by {score:.3g} > {SCORE_ATOL}")
        if a[3] is not None and b[3] is not None:
            mask = _mask_iou(a[3], b[3])
            worst["mask_iou"] = min(worst.get("mask_iou", 1.0), mask)
            if mask < MASK_MIN_IOU:
                problems.append(f"a {a[1]} mask has IoU {mask:.3f} < {MASK_MIN_IOU} with its counterpart")
    unpaired[1] += [b for j, b in enumerate(sides[1]) if j not in used]
    for side, name in ((0, "PyTorch"), (1, "ONNX Runtime")):
        at_cap = cap is not None and len(sides[side]) >= cap
        lowest = min((x[2] for x in sides[side]), default=0.0)
        for box in unpaired[side]:
            borderline = box[2] <= score_thresh + SCORE_ATOL or (at_cap and box[2] <= lowest + SCORE_ATOL)
            if not borderline:
                problems.append(f"a {box[1]} box (score {box[2]:.3f}) only {name} finds")
    return problems


def _detector_limits(engine: Engine) -> tuple[float, int | None]:
    settings = getattr(engine, "_settings", None)
    thresh = float(getattr(settings, "box_score_thresh", 0.0))
    cap = getattr(settings, "box_detections_per_img", None) or getattr(settings, "max_detections", None)
    return thresh, cap


def _synthetic_images():
    rng = np.random.default_rng(0)
    images = []
    for k, (w, h) in enumerate(_SYNTHETIC_SIZES):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (200, 40 + 60 * k, 40)  # something object-like
        images.append(Image.fromarray(pixels))
    return images


def _primary(task: ImageTask, data: Path, predictions: Path) -> float | None:
    if task.is_classification:
        value = score_classification(task, data, predictions)[0].get(task.primary_metric)
    else:
        value = score_predictions(task, data, predictions).metrics.get(task.primary_metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def gate_export(package: ModelPackage, onnx_file: Path, description: Mapping[str, Any], data: str | Path | None,
                *, max_images: int = GATE_MAX_IMAGES, margin_points: float = GATE_MARGIN_POINTS) -> GateResult:
    """Score the same images with the trained model (PyTorch) and ``onnx_file``, both on the CPU through
    the serving engines, and compare (see the module's docstring)."""
    t0 = time.monotonic()
    reference = load_engine(package, package.settings(("export gate", {"runtime": "pytorch", "device": "cpu"})))
    candidate_package = dataclasses.replace(package, onnx=onnx_file, onnx_info=dict(description))
    candidate = load_engine(candidate_package, package.settings(("export gate", {"runtime": "onnx"})))
    thresh, cap = _detector_limits(reference)
    worst: dict[str, float] = {}
    failed: list[str] = []
    metric = ours = theirs = None
    if data is None:
        images = _synthetic_images()
        prepared = [reference.preparer(im) for im in images]
        pairs = zip(reference.infer(prepared), candidate.infer(prepared))
        names = [f"synthetic {im.width}x{im.height} image {k}" for k, im in enumerate(images)]
        n = len(images)
    else:
        with tempfile.TemporaryDirectory(prefix="automl-vision-gate-") as tmp:
            folder = Path(tmp)
            capped, n, _ = first_lines_jsonl(data, max_images, folder / "gate.jsonl")
            files = []
            for name, engine in (("pytorch", reference), ("onnx", candidate)):
                out = folder / f"{name}.jsonl"
                predict_batch(package.path, capped, out, engine=engine, num_workers=0, progress_every_s=60)
                files.append(out)
            metric = package.task.primary_metric
            theirs, ours = _primary(package.task, capped, files[0]), _primary(package.task, capped, files[1])
            rows = [[json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] for f in files]
        pairs = zip(rows[0], rows[1])
        names = [r.get("image_url", f"line {k + 1}") for k, r in enumerate(rows[0])]
    for name, (a, b) in zip(names, pairs):
        problems = compare_answers(a, b, score_thresh=thresh, cap=cap, worst=worst)
        if problems:
            failed.append(f"{name}: {'; '.join(problems[:3])}")
    where = f"{n} validation images of {data}" if data is not None else f"{n} synthetic images (no validation data)"
    result = GateResult(True, "", None if data is None else str(data), n, metric, theirs, ours, margin_points,
                        worst, failed, time.monotonic() - t0)
    if failed:
        result.passed = False
        result.reason = (f"ONNX Runtime's answers differ from PyTorch's on {len(failed)} of {where}, e.g. "
                         f"{failed[0]}")
    elif metric is not None and (ours is None) != (theirs is None):
        result.passed = False
        result.reason = f"{metric} on {where}: PyTorch {theirs}, ONNX Runtime {ours}"
    elif result.delta_points is not None and abs(result.delta_points) > margin_points:
        result.passed = False
        result.reason = (f"{metric} on {where}: ONNX Runtime {ours:.4f} against PyTorch {theirs:.4f}, "
                         f"{result.delta_points:+.2f} points, beyond the margin of {margin_points} points")
    else:
        figures = f"{metric} PyTorch {theirs:.4f}, ONNX Runtime {ours:.4f}; " if ours is not None else ""
        result.reason = f"agrees on {where}: {figures}" + ", ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items()))
    return result


# --- packaging -------------------------------------------------------------------------------------

@dataclass
class PackageResult:
    path: Path
    onnx: OnnxExport
    settings: InferenceSettings


def _export_and_gate(package: ModelPackage, settings: InferenceSettings, dest: Path, data: str | Path | None,
                     gate_images: int, margin_points: float) -> OnnxExport:
    tmp = dest / (ONNX_FILE + ".tmp")
    export = _export(package, settings, tmp)
    if export.file is None:
        return export
    try:
        gate = gate_export(package, tmp, export.description or {}, data, max_images=gate_images,
                           margin_points=margin_points)
    except AutoMLError:
        tmp.unlink(missing_ok=True)
        raise  # the validation data cannot be read: the user's to fix, not a reason to drop the export
    except Exception as e:  # ONNX Runtime's own errors running the graph
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return OnnxExport(None, reason=f"ONNX Runtime could not run the export of {package.model_name}: "
                                       f"{type(e).__name__}: {first[:300]}; served with PyTorch")
    export.gate = gate.to_json()
    if not gate.passed:
        tmp.unlink(missing_ok=True)
        return OnnxExport(None, reason=f"the export failed its check: {gate.reason}; served with PyTorch",
                          gate=export.gate)
    tmp.replace(dest / ONNX_FILE)
    return export


def package_model(trial_outputs_dir: str | Path, dest_dir: str | Path, *, onnx: bool = True,
                  validation_data: str | Path | None = None, gate_images: int = GATE_MAX_IMAGES,
                  margin_points: float = GATE_MARGIN_POINTS) -> PackageResult:
    """Turn a trial's ``outputs/`` into a full package in ``dest_dir``: the trial's files plus
    ``settings.json``, ``model.onnx`` (when the export passes the gate on ``validation_data``, a labelled
    JSONL file, or on synthetic images without it), ``package.json`` and ``README.md``. ``dest_dir`` may
    be the trial's folder itself."""
    src, dest = Path(trial_outputs_dir), Path(dest_dir)
    package = load_package(src, verify=False)
    if dest.resolve() != src.resolve():
        dest.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            if item.is_file() and not item.name.endswith(".tmp"):
                atomic_copy(item, dest / item.name)
        package = load_package(dest, verify=False)
    settings = package.settings()
    atomic_write(dest / SETTINGS_FILE, json.dumps(settings.to_json(), indent=2) + "\n")
    digest = sha256_of(package.weights)
    previous = previous_onnx(dest, digest, validation_data) if onnx else None
    if previous is not None:
        export = previous  # the same weights were exported and gated when this package was made
    elif onnx:
        (dest / ONNX_FILE).unlink(missing_ok=True)  # an earlier export is of other weights
        export = _export_and_gate(package, settings, dest, validation_data, gate_images, margin_points)
    else:
        export = OnnxExport(None, reason="not requested")
    if export.file is None:
        (dest / ONNX_FILE).unlink(missing_ok=True)
        log.info("no ONNX export: %s", export.reason)
    elif previous is not None:
        log.info("ONNX export of these weights already checked; kept")
    else:
        log.info("ONNX export (%.1f s) kept: %s", export.seconds, (export.gate or {}).get("reason", ""))
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_by": f"automl-vision {__version__}",
        "task": package.task.value,
        "model_name": package.model_name,
        "num_classes": len(package.labels),
        "epoch": package.epoch,
        "weights_sha256": digest,
        "files": {"weights": package.weights.name, "config": CONFIG_FILE, "labels": LABELS_FILE,
                  "settings": SETTINGS_FILE, "metrics": METRICS_FILE if (dest / METRICS_FILE).is_file() else None,
                  "onnx": export.file, "readme": README_FILE},
        "onnx": export.manifest if export.manifest is not None else export.to_json(package, settings),
        # What a load verifies; settings.json is left out on purpose: it is there to be edited.
        "sha256": file_hashes((package.weights, dest / CONFIG_FILE, dest / LABELS_FILE, dest / ONNX_FILE)),
    }
    atomic_write(dest / README_FILE, readme(package, settings, export))
    atomic_write(dest / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return PackageResult(dest, export, settings)

