"""Explanations of a loaded engine's answers, in the original product's response shape.

A classifier's answer gains ``visualizations`` (a base64 PNG; multi-label: a list, one per explained
label) and/or ``attributions`` (``[3, crop, crop]``; multi-label: a list of them). The explained classes
are the most probable one, or for multi-label every label whose probability is at least
``confidence_score_threshold_multilabel``, most probable first.

A detector's answer (beyond the original, which explains no detector) gains, on each of its ``max_boxes``
highest-scoring boxes, ``visualizations`` (a base64 PNG) and/or ``attributions`` (the D-RISE map,
``[height, width]`` of the image as sent). D-RISE runs the masked images through the package's detector
with the served settings (tiling included) but for the score threshold, lowered to ``DRISE_SCORE_FLOOR``:
a box that a mask weakens below the served threshold still counts, with its lower score, as D-RISE means
it to (at the served threshold most masks lose the box altogether and the map comes out flat). When the
served engine cannot lower it (ONNX Runtime's graph fixes a floor; a higher threshold), the explainer
loads the package's PyTorch detector for the masked images, on the served device.

Gradients need PyTorch: a classifier served by ONNX Runtime is explained by the package's PyTorch network,
built on the first explanation.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from automl_vision.explain import params as P
from automl_vision.explain.classification import ClassifierExplainer, explained_classes
from automl_vision.explain.detection import Detection, drise
from automl_vision.explain.pictures import classification_picture, detection_picture
from automl_vision.serving.engine import Engine
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _rounded(values: np.ndarray) -> list:
    """Attributions as JSON numbers (float32 precision is all they carry)."""
    return np.asarray(values, dtype=np.float32).tolist()


@dataclass
class Explained:
    """One explained class of an image, or one explained box (``box_index`` into the answer's boxes)."""

    label: str
    score: float
    #: The attributions: ``[3, crop, crop]`` for a class, ``[height, width]`` for a box.
    values: np.ndarray
    #: The PNG picture, None when visualizations were not asked for.
    picture: bytes | None
    box_index: int | None = None


#: The score threshold of the masked images' detections (D-RISE weighs every detection by its score).
DRISE_SCORE_FLOOR = 0.01


class Explainer:
    """Explains one engine's answers; one explanation at a time (each is tens to thousands of passes)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.task: ImageTask = engine.task
        self._classifier: ClassifierExplainer | None = None
        self._detector: Engine | None = None
        self._lock = threading.Lock()

    def limits(self) -> P.ExplainLimits:
        s = self.engine.settings
        return P.ExplainLimits(max_steps=s.explain_max_steps, max_masks=s.explain_max_masks)

    def parse(self, value: Any, where: str = "xai_parameters", algorithm: str | None = None) -> P.ExplainParams:
        return P.parse_params(value, self.task, where, self.limits(), algorithm)

    def classifier(self) -> ClassifierExplainer:
        if self._classifier is None:
            engine = self.engine
            t0 = time.monotonic()
            explainer = ClassifierExplainer(engine.torch_model(), engine.settings["mean"], engine.settings["std"])
            self._classifier = explainer.to(engine.explain_device)
            log.info("explanations: %s's network ready on %s in %.1f s (Grad-CAM layer %s)",
                     engine.settings.model_name, engine.explain_device, time.monotonic() - t0,
                     explainer.layer_name)
        return self._classifier

    def detector(self) -> Engine:
        """The engine D-RISE runs the masked images through: the served one when it already keeps
        detections down to ``DRISE_SCORE_FLOOR`` on PyTorch, else the package's PyTorch detector with the
        served settings and that threshold."""
        if self._detector is None:
            engine = self.engine
            settings = engine.settings
            if engine.runtime == "pytorch" and settings["box_score_thresh"] <= DRISE_SCORE_FLOOR:
                self._detector = engine
            else:
                # The detectors (torchvision's, seconds to import) only when explaining one.
                from automl_vision.serving.detection import DetectionEngine

                model = {**settings.model, "box_score_thresh": min(settings["box_score_thresh"], DRISE_SCORE_FLOOR)}
                t0 = time.monotonic()
                self._detector = DetectionEngine(engine.package, dataclasses.replace(
                    settings, model=model, runtime="pytorch", device=str(engine.device)))
                log.info("explanations: %s's PyTorch detector ready on %s in %.1f s (box_score_thresh %s for "
                         "the masked images)", settings.model_name, engine.device, time.monotonic() - t0,
                         model["box_score_thresh"])
        return self._detector

    def explain_items(self, prepared: Any, answer: dict[str, Any], params: P.ExplainParams) -> list[Explained]:
        """The explanations of one scored image: one per explained class, or per explained box."""
        with self._lock:
            t0 = time.monotonic()
            if self.task.is_classification:
                items = self._classification(prepared, answer, params)
            else:
                items = self._detection(prepared, answer, params)
            log.info("explained one image with %s (%d %s) in %.2f s", params.algorithm, len(items),
                     "class(es)" if self.task.is_classification else "box(es)", time.monotonic() - t0)
            return items

    def explain(self, prepared: Any, answer: dict[str, Any], params: P.ExplainParams) -> dict[str, Any]:
        """``answer`` with the explanation's keys added (a new dict), in the response shape above."""
        items = self.explain_items(prepared, answer, params)
        out = dict(answer)
        if self.task.is_classification:
            multilabel = self.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
            if params.visualizations:
                pictures = [_b64(i.picture) for i in items]
                out["visualizations"] = pictures if multilabel else pictures[0]
            if params.attributions:
                arrays = [_rounded(i.values) for i in items]
                out["attributions"] = arrays if multilabel else arrays[0]
            return out
        out["boxes"] = [dict(b) for b in answer.get("boxes", [])]
        for item in items:
            box = out["boxes"][item.box_index]
            if params.visualizations:
                box["visualizations"] = _b64(item.picture)
            if params.attributions:
                box["attributions"] = _rounded(item.values)
        return out

    # --- classification ------------------------------------------------------------------------
    def _classification(self, x: torch.Tensor, answer: dict[str, Any], params: P.ExplainParams) -> list[Explained]:
        multilabel = self.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL
        targets = explained_classes(answer["probs"], multilabel, params.confidence_score_threshold_multilabel)
        explainer = self.classifier()
        results = explainer.explain(x, targets, params)
        crop = (explainer.pixels(x).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        labels = self.engine.labels
        return [Explained(labels[r.target], float(answer["probs"][r.target]), r.values,
                          classification_picture(crop, r.heat) if params.visualizations else None)
                for r in results]

    # --- detection -----------------------------------------------------------------------------
    def _detection(self, prepared: Any, answer: dict[str, Any], params: P.ExplainParams) -> list[Explained]:
        engine = self.engine
        image = _prepared_image(prepared)
        w, h = image.size
        boxes = answer.get("boxes", [])
        order = sorted(range(len(boxes)), key=lambda i: -boxes[i]["score"])[:params.max_boxes]
        index = {name: i for i, name in enumerate(engine.labels)}
        targets = []
        for i in order:
            b = boxes[i]["box"]
            targets.append(Detection((b["topX"] * w, b["topY"] * h, b["bottomX"] * w, b["bottomY"] * h),
                                     index[boxes[i]["label"]], float(boxes[i]["score"])))

        detector = self.detector()

        def detect(images: Sequence[Image.Image]) -> list[list[Detection]]:
            found = detector.predictions([detector.preparer(im) for im in images], masks=False)
            return [[Detection(tuple(map(float, box)), int(label), float(score))
                     for box, label, score in zip(p.boxes, p.labels, p.scores)] for p in found]

        if not targets:
            return []
        maps = drise(image, detect, targets, params)
        out = []
        for i, t, heat in zip(order, targets, maps):
            label, score = boxes[i]["label"], float(boxes[i]["score"])
            picture = detection_picture(image, heat, t.box, f"{label} {score:.2f}") if params.visualizations else None
            out.append(Explained(label, score, heat, picture, box_index=i))
        return out


def _prepared_image(prepared: Any) -> Image.Image:
    """The image a detection engine prepared: HWC uint8 (yolov5) or CHW floats in [0, 1] (torchvision)."""
    if isinstance(prepared, torch.Tensor):
        pixels = (prepared.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return Image.fromarray(np.asarray(prepared, dtype=np.uint8))
