"""ONNX exports of the detectors, and ONNX Runtime stand-ins that the prediction functions call like the
PyTorch models (``models/detection.py``'s ``predict_tensors``, ``models/yolo.py``'s ``predict_arrays``),
so that pre- and post-processing, tiling included, are the same code for both runtimes.

torchvision detectors (Faster R-CNN, RetinaNet, Mask R-CNN), ``images`` float32 ``[batch, 3, height,
width]`` RGB in [0, 1], already resized as torchvision resizes for ``min_size``/``max_size`` (its own
transform's ``resize``, run before the graph: the exported resize rounds some sizes differently, e.g.
80x55 at min_size 64 comes out a pixel narrower), any batch and size, the images of one call of one
size (the engines group them so, as torchvision would otherwise pad them):

* ``boxes`` ``[batch, K, 4]`` (x1, y1, x2, y2 in the input's pixels; scaled back to the original
  image outside the graph), ``scores`` ``[batch, K]``,
  ``labels`` ``[batch, K]`` (1..C; 0 pads), ``counts`` ``[batch]`` (how many of the K rows are
  detections), and for Mask R-CNN ``mask_probs`` ``[batch, K, 1, 28, 28]``: each box's mask
  probabilities before they are pasted into the image (done outside the graph, by torchvision's
  ``paste_masks_in_image``, as its own post-processing does). K is ``box_detections_per_img``.
* Inside the graph, from the export's settings: normalization, NMS (``box_nms_thresh``), the score
  floor (``box_score_thresh``) and K. Outside it, applied per load: the resizing, a higher
  ``box_score_thresh`` or a lower ``box_detections_per_img`` (filtering the graph's sorted
  detections gives what the model would with those settings, since greedy NMS never lets a box be
  suppressed by a lower-scored one), the mask threshold, polygons and tiling.
* The batch is an ONNX ``Loop`` over the images: torchvision's detectors keep per-image lists
  between their stages, which tracing would unroll to the batch size of the example. The loop body
  is the traced single-image model; the wrapper around it is TorchScript.

yolov5 (ultralytics), ``images`` float32 ``[batch, 3, height, width]`` letterboxed RGB in [0, 1]:
``output`` ``[batch, 4 + C, anchors]``, the detection head's raw answer; letterbox, NMS and scaling
back stay ultralytics' functions outside the graph, so every inference setting applies per load.

The exporter is torch's TorchScript-based one (``dynamo=False``): the dynamo exporter stops at the
data-dependent branches of torchvision's box operations (``batched_nms``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from automl_vision.errors import ConfigError

log = logging.getLogger(__name__)

#: The TorchScript exporter's opset for the detectors (ONNX Runtime 1.16+ runs it).
DETECTOR_OPSET = 17
#: Settings fixed inside a torchvision detector's graph (exactly), and those it bounds (at most stricter).
GRAPH_FIXED = ("box_nms_thresh",)
GRAPH_FLOOR = "box_score_thresh"  # may be raised per load
GRAPH_CAP = "box_detections_per_img"  # may be lowered per load


def _quiet_export(model: nn.Module, args: tuple, path: Path, **kwargs: Any) -> None:
    """torch.onnx.export with its printing and warnings kept out of a run's output."""
    with contextlib.redirect_stdout(io.StringIO()) as printed, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=DETECTOR_OPSET, **kwargs)
    log.debug("torch.onnx.export: %s", printed.getvalue().strip())


def ort_session(path: str | Path, cuda: bool = False):
    """An ONNX Runtime session (CPU, or CUDA first with ``cuda``) that neither spins idle threads nor logs
    its graph rewrites."""
    import onnxruntime as ort  # optional at run time, and 0.5 s to import

    options = ort.SessionOptions()
    # Idle ONNX Runtime threads spin by default, taking the cores that decode the next requests' images
    # (and any PyTorch work) in this same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # the Loop's subgraph renames are warnings, one per initializer
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


class OpenVinoSession:
    """OpenVINO on the CPU behind ONNX Runtime's ``run(None, {name: array})``: the same ``model.onnx``,
    compiled by OpenVINO, in full float32 (on CPUs with bfloat16 units OpenVINO would otherwise compute
    in bfloat16, and answer differently from the checked export)."""

    def __init__(self, path: str | Path):
        import openvino  # optional: the openvino extra

        self.compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)

    def run(self, output_names, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        answers = self.request.infer(dict(feed))
        return [np.asarray(answers[o]) for o in self.outputs]


def onnx_session(path: str | Path, runtime: str = "onnx", cuda: bool = False):
    """What runs ``model.onnx``: ONNX Runtime (``onnx``; with ``cuda`` on the GPU where it can) or OpenVINO
    (``openvino``, on the CPU); a file neither can load is a ConfigError naming it."""
    try:
        return OpenVinoSession(path) if runtime == "openvino" else ort_session(path, cuda)
    except Exception as e:  # both raise their own untyped errors for a bad model file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        name = "OpenVINO" if runtime == "openvino" else "ONNX Runtime"
        raise ConfigError(f"{path}: {name} cannot load it ({first[:300]}); the file is corrupt or truncated: "
                          "package the model again, or serve with runtime='pytorch'") from None


# --- torchvision detectors -----------------------------------------------------------------------

def _as_given(image, target=None):
    """In place of the transform's resize: the graph takes images resized already."""
    return image, target


def _unchanged(result, image_shapes, original_image_sizes):
    """In place of the transform's post-processing: the boxes stay in the resized image's pixels and the
    masks unpasted (both done outside the graph, by torchvision's own functions)."""
    return result


class _OneImage(nn.Module):
    def __init__(self, detector: nn.Module, with_masks: bool):
        super().__init__()
        self.detector, self.with_masks = detector, with_masks

    def forward(self, image: torch.Tensor):
        out = self.detector([image])[0]
        if self.with_masks:
            return out["boxes"], out["scores"], out["labels"], out["masks"]
        return out["boxes"], out["scores"], out["labels"]


class _Batch(nn.Module):
    """TorchScript: the traced single-image detector over each image of a batch, padded to K rows."""

    def __init__(self, one: nn.Module, k: int):
        super().__init__()
        self.one, self.k = one, k

    def forward(self, images: torch.Tensor):
        boxes, scores, labels, counts = [], [], [], []
        for i in range(images.shape[0]):
            b, s, c = self.one(images[i])
            pad = self.k - b.shape[0]
            boxes.append(torch.nn.functional.pad(b, [0, 0, 0, pad]))
            scores.append(torch.nn.functional.pad(s, [0, pad]))
            labels.append(torch.nn.functional.pad(c, [0, pad]))
            counts.append(torch.tensor(b.shape[0]))
        return torch.stack(boxes), torch.stack(scores), torch.stack(labels), torch.stack(counts)


class _MaskBatch(nn.Module):
    """As :class:`_Batch`, with each detection's mask probabilities."""

    def __init__(self, one: nn.Module, k: int):
        super().__init__()
        self.one, self.k = one, k

    def forward(self, images: torch.Tensor):
        boxes, scores, labels, counts, masks = [], [], [], [], []
        for i in range(images.shape[0]):
            b, s, c, m = self.one(images[i])
            pad = self.k - b.shape[0]
            boxes.append(torch.nn.functional.pad(b, [0, 0, 0, pad]))
            scores.append(torch.nn.functional.pad(s, [0, pad]))
            labels.append(torch.nn.functional.pad(c, [0, pad]))
            masks.append(torch.nn.functional.pad(m, [0, 0, 0, 0, 0, 0, 0, pad]))
            counts.append(torch.tensor(b.shape[0]))
        return torch.stack(boxes), torch.stack(scores), torch.stack(labels), torch.stack(counts), torch.stack(masks)


def export_torchvision_detector(model: nn.Module, path: Path, settings: Mapping[str, Any], *,
                                with_masks: bool) -> dict[str, Any]:
    """Export a torchvision detector (eval mode, CPU, built with ``settings``) to ``path``; returns the
    manifest's description of the graph (inputs, outputs, the settings fixed inside it)."""
    detector = copy.deepcopy(model).eval()
    detector.transform.resize = _as_given
    detector.transform.postprocess = _unchanged
    k = int(settings["box_detections_per_img"])
    example = torch.rand(3, 320, 416, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        # tracing warns about every shape it turns into a constant, scripting that it is deprecated
        warnings.simplefilter("ignore")
        one = torch.jit.trace(_OneImage(detector, with_masks), (example,), check_trace=False)
        batch = torch.jit.script((_MaskBatch if with_masks else _Batch)(one, k))
    outputs = ["boxes", "scores", "labels", "counts"] + (["mask_probs"] if with_masks else [])
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{name: {0: "batch"} for name in outputs}}
    _quiet_export(batch, (example[None].repeat(2, 1, 1, 1),), path, input_names=["images"],
                  output_names=outputs, dynamic_axes=axes)
    return {
        "opset": DETECTOR_OPSET,
        "input": {"name": "images", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                  "preprocessing": {"scale": "1/255", "channels": "RGB", "resize": {
                                    "min_size": settings["min_size"], "max_size": settings["max_size"],
                                    "how": "torchvision's GeneralizedRCNNTransform.resize (bilinear); the "
                                           "boxes come back in the resized image's pixels"},
                                    "normalization": "in the graph"}},
        "outputs": {"boxes": ["batch", k, 4], "scores": ["batch", k], "labels": ["batch", k],
                    "counts": ["batch"], **({"mask_probs": ["batch", k, 1, 28, 28]} if with_masks else {})},
        "labels": "1..C are labels.json's classes in order; 0 pads the rows past counts",
        "graph_settings": {name: settings[name] for name in (*GRAPH_FIXED, GRAPH_FLOOR, GRAPH_CAP)},
    }


def graph_settings_problem(graph: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """Why ``settings`` cannot be served by an export made with ``graph`` settings (None: they can)."""
    changed = [f"{k}={settings[k]!r} (exported with {graph[k]!r})" for k in GRAPH_FIXED
               if k in graph and k in settings and settings[k] != graph[k]]
    if GRAPH_FLOOR in graph and settings.get(GRAPH_FLOOR, graph[GRAPH_FLOOR]) < graph[GRAPH_FLOOR]:
        changed.append(f"{GRAPH_FLOOR}={settings[GRAPH_FLOOR]!r} below the export's {graph[GRAPH_FLOOR]!r}")
    if GRAPH_CAP in graph and settings.get(GRAPH_CAP, graph[GRAPH_CAP]) > graph[GRAPH_CAP]:
        changed.append(f"{GRAPH_CAP}={settings[GRAPH_CAP]!r} above the export's {graph[GRAPH_CAP]!r}")
    if not changed:
        return None
    return "the ONNX graph fixes these settings, changed at load time: " + "; ".join(changed)


class OnnxTorchvisionDetector:
    """ONNX Runtime (or OpenVINO) in place of a torchvision detector in eval mode: called with a list of CHW float
    images, it answers torchvision's list of ``{"boxes", "scores", "labels"[, "masks"]}`` (masks pasted
    into the image as torchvision does), with ``box_score_thresh`` and ``box_detections_per_img`` of
    ``settings`` applied."""

    def __init__(self, path: str | Path, settings: Mapping[str, Any], *, with_masks: bool, runtime: str = "onnx"):
        self.session = onnx_session(path, runtime)
        self.score_thresh = float(settings["box_score_thresh"])
        self.detections = int(settings["box_detections_per_img"])
        self.with_masks = with_masks
        # only its resize is used (normalization is in the graph)
        self.transform = GeneralizedRCNNTransform(int(settings["min_size"]), int(settings["max_size"]),
                                                  [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]).eval()

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        resized = [self.transform.resize(t.detach().cpu().float())[0] for t in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(resized):
            groups.setdefault(tuple(t.shape), []).append(i)
        out: list[dict[str, torch.Tensor]] = [{}] * len(images)
        for indices in groups.values():
            answers = self.session.run(None, {"images": np.stack([resized[i].numpy() for i in indices])})
            for row, i in enumerate(indices):
                out[i] = self._one(answers, row, tuple(resized[i].shape[-2:]), tuple(images[i].shape[-2:]))
        return out

    def _one(self, answers: list[np.ndarray], row: int, resized: tuple[int, int],
             original: tuple[int, int]) -> dict[str, torch.Tensor]:
        n = int(answers[3][row])
        scores = torch.from_numpy(answers[1][row, :n].copy())
        # The graph's rows are sorted by score; torchvision keeps scores strictly above the threshold.
        keep = torch.nonzero(scores > self.score_thresh).flatten()[:self.detections]
        boxes = resize_boxes(torch.from_numpy(answers[0][row, :n].copy())[keep], resized, original)
        result = {"boxes": boxes, "scores": scores[keep], "labels": torch.from_numpy(answers[2][row, :n].copy())[keep]}
        if self.with_masks:
            probs = torch.from_numpy(answers[4][row, :n].copy())[keep]
            result["masks"] = paste_masks_in_image(probs, boxes, original)
        return result


# --- yolov5 --------------------------------------------------------------------------------------

def _detect_heads(model: nn.Module) -> list[nn.Module]:
    from ultralytics.nn.modules.head import Detect  # the caller has run prepare_ultralytics()

    return [m for m in model.modules() if isinstance(m, Detect)]


def export_yolo(model: nn.Module, path: Path) -> dict[str, Any]:
    """Export a yolov5 DetectionModel (eval mode, CPU) to ``path`` with a dynamic batch and image size."""
    exported = copy.deepcopy(model).eval()
    for head in _detect_heads(exported):
        head.export, head.dynamic, head.format = True, True, "onnx"  # the raw answer; anchors from the input's shape
    stride = int(exported.stride.max())
    example = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    _quiet_export(exported, (example,), path, input_names=["images"], output_names=["output"],
                  dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "anchors"}})
    return {
        "opset": DETECTOR_OPSET,
        "input": {"name": "images", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                  "preprocessing": {"letterbox": "img_size, padded with 114 to a multiple of the stride",
                                    "scale": "1/255", "channels": "RGB", "stride": stride}},
        "outputs": {"output": ["batch", "4 + classes", "anchors"]},
        "postprocessing": "ultralytics' non_max_suppression with box_score_thresh and box_iou_thresh",
        "stride": stride,
        "graph_settings": {},
    }


class OnnxYolo:
    """ONNX Runtime (or OpenVINO) in place of a yolov5 DetectionModel in eval mode: ``[B, 3, H, W]`` in, the head's
    raw ``[B, 4 + C, anchors]`` out (what ultralytics' NMS takes)."""

    device = torch.device("cpu")

    def __init__(self, path: str | Path, stride: int, runtime: str = "onnx"):
        self.session = onnx_session(path, runtime)
        self.stride = torch.tensor([float(stride)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": x.detach().cpu().float().numpy()})[0])
