"""The explanation parameters of a request: the original product's ``xai_parameters`` and ours.

The original's keys for classification (its defaults): ``xai_algorithm`` (``xrai``), ``visualizations``
(true), ``attributions`` (false), ``n_steps`` (50, xrai and integrated_gradients), ``xrai_fast`` (true),
``approximation_method`` (``riemann_middle`` or ``gausslegendre``), ``confidence_score_threshold_multilabel``
(0.5). For detection and instance segmentation (which the original does not explain) the algorithm is
``d_rise`` with ``num_masks``, ``mask_grid_size``, ``mask_keep_probability``, ``max_boxes`` and ``seed``.

Every problem is reported at once, naming where it is, the key, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from automl_vision.errors import DataError
from automl_vision.spec.tasks import ImageTask

XRAI = "xrai"
INTEGRATED_GRADIENTS = "integrated_gradients"
GUIDED_GRADCAM = "guided_gradcam"
GUIDED_BACKPROP = "guided_backprop"
D_RISE = "d_rise"
CLASSIFICATION_METHODS = (XRAI, INTEGRATED_GRADIENTS, GUIDED_GRADCAM, GUIDED_BACKPROP)
DETECTION_METHODS = (D_RISE,)
APPROXIMATION_METHODS = ("riemann_middle", "gausslegendre")

#: Hard bounds, whatever the server's limits (which may only be lower).
MAX_STEPS = 1000
MAX_MASKS = 20000
MAX_BOXES = 20


class ExplainError(DataError):
    """Explanation parameters that cannot be used (a 400 when served)."""


@dataclass(frozen=True)
class ExplainParams:
    algorithm: str
    visualizations: bool = True
    attributions: bool = False
    #: integrated_gradients and xrai: steps of the path integral.
    n_steps: int = 50
    xrai_fast: bool = True
    approximation_method: str = "riemann_middle"
    confidence_score_threshold_multilabel: float = 0.5
    #: d_rise: random masks, their grid (cells per side), the chance a cell is kept, boxes explained.
    num_masks: int = 1000
    mask_grid_size: int = 16
    mask_keep_probability: float = 0.5
    max_boxes: int = 3
    seed: int = 0

    def passes(self) -> int:
        """Forward passes one explained image (or box set) costs, for limits and logs."""
        if self.algorithm == D_RISE:
            return self.num_masks
        if self.algorithm == XRAI:
            return 2 * self.n_steps  # integrated gradients from a black and a white baseline
        if self.algorithm == INTEGRATED_GRADIENTS:
            return self.n_steps
        return 1

    def to_json(self) -> dict[str, Any]:
        keys = _KEYS_FOR[self.algorithm]
        return {"xai_algorithm": self.algorithm, **{k: getattr(self, k) for k in keys}}


_COMMON = ("visualizations", "attributions")
_KEYS_FOR = {
    XRAI: (*_COMMON, "n_steps", "xrai_fast", "confidence_score_threshold_multilabel"),
    INTEGRATED_GRADIENTS: (*_COMMON, "n_steps", "approximation_method", "confidence_score_threshold_multilabel"),
    GUIDED_GRADCAM: (*_COMMON, "confidence_score_threshold_multilabel"),
    GUIDED_BACKPROP: (*_COMMON, "confidence_score_threshold_multilabel"),
    D_RISE: (*_COMMON, "num_masks", "mask_grid_size", "mask_keep_probability", "max_boxes", "seed"),
}
_TYPES = {f.name: f.type for f in fields(ExplainParams)}


@dataclass(frozen=True)
class ExplainLimits:
    """What one request may ask for (the serving settings ``explain_max_*``); None: only the hard bounds."""

    max_steps: int | None = None
    max_masks: int | None = None


def default_algorithm(task: ImageTask) -> str:
    return XRAI if task.is_classification else D_RISE


def algorithms_for(task: ImageTask) -> tuple[str, ...]:
    return CLASSIFICATION_METHODS if task.is_classification else DETECTION_METHODS


def parse_params(value: Any, task: ImageTask, where: str = "xai_parameters",
                 limits: ExplainLimits = ExplainLimits(), algorithm: str | None = None) -> ExplainParams:
    """``value`` (a mapping, or None for the defaults) as checked :class:`ExplainParams` for ``task``;
    ``algorithm`` is the default when ``value`` names none."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ExplainError(f"{where} must be a JSON object like {{\"xai_algorithm\": \"xrai\"}}, got "
                           f"{type(value).__name__}")
    allowed = algorithms_for(task)
    name = value.get("xai_algorithm", algorithm or default_algorithm(task))
    if name not in allowed:
        other = DETECTION_METHODS if task.is_classification else CLASSIFICATION_METHODS
        hint = f" ({name} explains {'detectors' if task.is_classification else 'classifiers'})" if name in other else ""
        raise ExplainError(f"{where}.xai_algorithm={name!r} for a model of task {task.value}{hint}; "
                           f"allowed: {', '.join(allowed)}")
    keys = _KEYS_FOR[name]
    problems: list[str] = []
    given: dict[str, Any] = {}
    for key, raw in value.items():
        if key == "xai_algorithm":
            continue
        if key not in keys:
            problems.append(f"{where}.{key}: not a parameter of {name}; its parameters: {', '.join(keys)}")
            continue
        kind = _TYPES[key]
        if kind == "bool":
            if not isinstance(raw, bool):
                problems.append(f"{where}.{key}={raw!r}: expected true or false")
                continue
        elif kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                problems.append(f"{where}.{key}={raw!r}: expected a whole number")
                continue
        elif kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                problems.append(f"{where}.{key}={raw!r}: expected a number")
                continue
            raw = float(raw)
        elif not isinstance(raw, str):
            problems.append(f"{where}.{key}={raw!r}: expected a string")
            continue
        given[key] = raw
    params = replace(ExplainParams(name), **given)
    # A default above the server's limit is lowered to it; a value asked for above it is refused.
    steps_high = min(MAX_STEPS, limits.max_steps or MAX_STEPS)
    masks_high = min(MAX_MASKS, limits.max_masks or MAX_MASKS)
    if "n_steps" not in given and params.n_steps > steps_high:
        params = replace(params, n_steps=steps_high)
    if "num_masks" not in given and params.num_masks > masks_high:
        params = replace(params, num_masks=masks_high)
    problems += _range_problems(params, where, steps_high, masks_high)
    if problems:
        raise ExplainError(problems)
    return params


def _range_problems(p: ExplainParams, where: str, steps_high: int, masks_high: int) -> list[str]:
    out = []

    def bound(key: str, low, high, hard=None):
        value = getattr(p, key)
        if not low <= value <= high:
            why = " (the server's limit, explain_max_steps / explain_max_masks)" if hard and high < hard else ""
            out.append(f"{where}.{key}={value}: allowed from {low} to {high}{why}")

    if p.algorithm in (XRAI, INTEGRATED_GRADIENTS):
        bound("n_steps", 2, steps_high, MAX_STEPS)
    if p.algorithm == INTEGRATED_GRADIENTS and p.approximation_method not in APPROXIMATION_METHODS:
        out.append(f"{where}.approximation_method={p.approximation_method!r}; allowed: "
                   f"{', '.join(APPROXIMATION_METHODS)}")
    if not 0.0 <= p.confidence_score_threshold_multilabel <= 1.0:
        out.append(f"{where}.confidence_score_threshold_multilabel={p.confidence_score_threshold_multilabel}: "
                   "allowed from 0 to 1")
    if p.algorithm == D_RISE:
        bound("num_masks", 1, masks_high, MAX_MASKS)
        bound("mask_grid_size", 2, 64)
        bound("max_boxes", 1, MAX_BOXES)
        if not 0.0 < p.mask_keep_probability < 1.0:
            out.append(f"{where}.mask_keep_probability={p.mask_keep_probability}: allowed above 0 and below 1")
        if p.seed < 0:
            out.append(f"{where}.seed={p.seed}: allowed from 0")
    if not (p.visualizations or p.attributions):
        out.append(f"{where}: visualizations and attributions are both false, so there is nothing to return; "
                   "set one of them to true")
    return out
