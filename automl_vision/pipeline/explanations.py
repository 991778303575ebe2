"""Explanations of a few validation images for the run report: the evaluation's ``explanations/`` folder.

After the best model is scored, a few validation images are explained with the served model's own
explainer: the most confident correct answers and the most confident wrong ones (half each, the other
kind filling in when one kind runs short). A classifier is explained with XRAI (the original product's
default) for its predicted class, or every predicted label of a multi-label model (with none at 0.5, its
most probable label); a detector with D-RISE for its highest-scoring box. An image is correct when its
predicted class is the true one (multi-label: the predicted set is the true set), or, for a detector,
when its highest-scoring box overlaps a true object of its label at IoU 0.5 or more.

``explanations/explanations.json`` lists each picture with the image, whether it was right, the truth,
the answer and the method; the report shows them. Explaining costs forward passes (``EXPLAIN_PARAMETERS``);
``benchmarks/explain_latency.py`` measures them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from automl_vision.data.load import load_dataset
from automl_vision.evaluation.scoring import PREDICTIONS_FILE, match_predictions
from automl_vision.explain import params as P
from automl_vision.explain.pictures import EXPLANATIONS_DIR, INDEX_FILE
from automl_vision.models.detections import box_iou
from automl_vision.serving.engine import Engine
from automl_vision.serving.explain import Explainer
from automl_vision.serving.images import decode_image
from automl_vision.spec.tasks import ImageTask

log = logging.getLogger(__name__)

#: Images explained per evaluation, by default.
DEFAULT_IMAGES = {"classification": 4, "detection": 2}
#: The methods and settings the report uses: XRAI at the original's defaults; D-RISE for the top box on an
#: 8x8 grid (coarse cells show something with few masks), ``DRISE_MASKS`` masks by the device.
EXPLAIN_PARAMETERS = {
    "classification": {"xai_algorithm": "xrai", "n_steps": 50, "xrai_fast": True},
    "detection": {"xai_algorithm": "d_rise", "max_boxes": 1, "mask_grid_size": 8},
}
#: Each mask is one pass of the detector (three with 2x1 tiles): about 20 ms on a GPU, 1 to 2.5 s for an
#: R-CNN at min_size 320 on a 2-core CPU (benchmarks/explain_latency.py, docs/serving.md), so a CPU-only run
#: gets a rough map in a minute or two rather than a finer one in ten.
DRISE_MASKS = {"cpu": 32, "gpu": 200}


def _kind(engine: Engine) -> str:
    return "classification" if engine.task.is_classification else "detection"


def default_images(engine: Engine) -> int:
    return DEFAULT_IMAGES[_kind(engine)]


def report_parameters(engine: Engine, given: Mapping[str, Any] | None = None) -> P.ExplainParams:
    """The checked parameters of the report's explanations: ``EXPLAIN_PARAMETERS`` for the task, with
    ``given`` over them (only ``given`` when it names another method)."""
    base = dict(EXPLAIN_PARAMETERS[_kind(engine)])
    if base["xai_algorithm"] == "d_rise":
        base["num_masks"] = DRISE_MASKS["cpu" if str(engine.device).startswith("cpu") else "gpu"]
    given = dict(given or {})
    if given.get("xai_algorithm", base["xai_algorithm"]) == base["xai_algorithm"]:
        given = {**base, **given}
    return Explainer(engine).parse(given, "explanation parameters")


def _classification_rows(records, matched, multilabel: bool) -> list[dict[str, Any]]:
    rows = []
    for record, (_, row) in zip(records, matched):
        labels, probs = row.get("labels") or [], np.asarray(row.get("probs") or [], dtype=np.float64)
        if not len(probs):
            continue
        if multilabel:
            predicted = sorted(labels[i] for i in np.flatnonzero(probs >= 0.5))
        else:
            predicted = [labels[int(probs.argmax())]]
        rows.append({"record": record, "answer": row, "truth": sorted(record.labels), "predicted": predicted,
                     "correct": predicted == sorted(record.labels), "confidence": float(probs.max())})
    return rows


def _detection_rows(records, matched) -> list[dict[str, Any]]:
    rows = []
    for record, (_, row) in zip(records, matched):
        boxes = row.get("boxes") or []
        if not boxes:
            continue  # nothing to explain
        top = max(boxes, key=lambda b: b["score"])
        b = top["box"]
        mine = np.asarray([[b["topX"], b["topY"], b["bottomX"], b["bottomY"]]])
        same = [o.box for o in record.objects if o.label == top["label"] and not o.is_crowd]
        correct = bool(same) and float(box_iou(mine, np.asarray(same)).max()) >= 0.5
        rows.append({"record": record, "answer": row, "truth": sorted({o.label for o in record.objects}),
                     "predicted": [top["label"]], "correct": correct, "confidence": float(top["score"])})
    return rows


def pick(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The most confident correct and the most confident wrong rows, half each (one kind fills in for the other)."""
    right = sorted((r for r in rows if r["correct"]), key=lambda r: -r["confidence"])
    wrong = sorted((r for r in rows if not r["correct"]), key=lambda r: -r["confidence"])
    n_right = min(len(right), max(count - min(len(wrong), count // 2), 0))
    n_wrong = min(len(wrong), count - n_right)
    return right[:n_right] + wrong[:n_wrong]


def explain_validation_images(engine: Engine, data: str | Path, out: str | Path, count: int | None = None,
                              parameters: Mapping[str, Any] | None = None, *,
                              echo: Callable[[str], None] | None = None) -> Path | None:
    """Explain ``count`` validation images of ``data`` scored into ``out/predictions.jsonl`` by ``engine``;
    write ``out/explanations/`` and return its index file (None when no image can be explained). ``echo``
    (default: the log) gets a line per image and the summary."""
    say = echo or log.info
    out = Path(out)
    count = default_images(engine) if count is None else count
    if count <= 0:
        return None
    t0 = time.monotonic()
    dataset = load_dataset(data, engine.task)
    records = list(dataset.records)
    matched = match_predictions(records, out / PREDICTIONS_FILE, data)
    if engine.task.is_classification:
        rows = _classification_rows(records, matched, engine.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL)
    else:
        rows = _detection_rows(records, matched)
    chosen = pick(rows, count)
    folder = out / EXPLANATIONS_DIR
    if folder.exists():
        shutil.rmtree(folder)
    if not chosen:
        say("explanations: no validation image has an answer to explain (a detector found no box on any)")
        return None
    explainer = Explainer(engine)
    params = report_parameters(engine, parameters)
    limits = engine.settings.image_limits()
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    entries = []
    say(f"explanations: {len(chosen)} validation images for the report, {params.algorithm} "
        f"({params.passes()} passes an image)")
    for n, row in enumerate(chosen):
        started = time.monotonic()
        record, answer = row["record"], {k: v for k, v in row["answer"].items() if k != "image_url"}
        image = decode_image(Path(record.path).read_bytes(), where=record.image_url, **limits)
        asked = params
        if engine.task.is_classification and not row["predicted"]:
            # a multi-label answer with no label at the threshold: its most probable label shows why
            asked = dataclasses.replace(params, confidence_score_threshold_multilabel=max(answer["probs"]))
        for k, item in enumerate(explainer.explain_items(engine.preparer(image), answer, asked)):
            name = f"{n:02d}_{k}.png"
            (tmp / name).write_bytes(item.picture)
            entries.append({"image_url": record.image_url, "correct": row["correct"], "truth": row["truth"],
                            "predicted": row["predicted"], "explained": item.label, "score": round(item.score, 4),
                            "method": params.algorithm, "picture": name})
        verdict = "right" if row["correct"] else "wrong"
        say(f"explanations: {n + 1}/{len(chosen)} {Path(record.image_url).name} ({verdict}) in "
            f"{time.monotonic() - started:.1f} s")
    seconds = round(time.monotonic() - t0, 1)
    summary = (f"explained {len(chosen)} validation images ({sum(r['correct'] for r in chosen)} right, "
               f"{sum(not r['correct'] for r in chosen)} wrong) with {params.algorithm} in {seconds} s")
    (tmp / INDEX_FILE).write_text(json.dumps({"parameters": params.to_json(), "summary": summary,
                                              "seconds": seconds, "explanations": entries}, indent=2) + "\n")
    tmp.replace(folder)
    say(f"explanations: {summary}")
    return folder / INDEX_FILE
