"""The pictures of an evaluation (PNG bytes): confusion matrices, ROC and PR curves, per-class tables,
detection PR curves and AP per label, and sample images with their true and predicted labels, boxes and masks.

The confusion matrix and ROC/PR charts are the run report's own (``charts.py``) so a model looks the
same in both; the rest is drawn here in the same style.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from automl_vision.evaluation.scoring import PRCurve
from automl_vision.report import charts
from automl_vision.report.draw import Annotations, Tile, compose_grid
from automl_vision.report.html import figure_png, image_png, plt

STYLE, WIDTH = charts.STYLE, charts.WIDTH


def confusion_matrix_png(matrix: np.ndarray, classes: Sequence[str]) -> bytes:
    """Rows: true class; columns: predicted class."""
    return charts.confusion_matrix(np.asarray(matrix), list(classes))


def roc_pr_png(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> bytes:
    """One-vs-rest ROC and precision-recall curves per class plus the micro average (``targets`` (N, C) 0/1)."""
    return charts.roc_pr_curves(np.asarray(targets), np.asarray(probs), list(classes))


def multilabel_confusion_png(matrices: Sequence, classes: Sequence[str]) -> bytes:
    """Multi-label: per class, the counts of true/false positives and negatives at the 0.5 threshold."""
    m = np.asarray(matrices).reshape(len(classes), 4)  # tn, fp, fn, tp
    counts = m[:, [3, 2, 1, 0]]  # tp, fn, fp, tn
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    columns = ["true positive", "false negative", "false positive", "true negative"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, max(2.0, 0.38 * len(classes) + 1.2)))
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(4), columns, rotation=20, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(4):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=9,
                        color="white" if share[i, j] > 0.5 else "#1d2433")
        ax.set_title("per class, at the 0.5 threshold")
        fig.tight_layout()
        return figure_png(fig)


def table_png(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> bytes:
    """A table as a picture (for the per-class report)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(min(WIDTH, 1.5 * len(headers) + 1.0), 0.26 * (len(rows) + 1)))
        ax.axis("off")
        tab = ax.table(cellText=[list(r) for r in rows] or [["-"] * len(headers)], colLabels=list(headers),
                       bbox=[0, 0, 1, 1], cellLoc="right", colLoc="right")
        tab.auto_set_font_size(False)
        tab.set_fontsize(9)
        for (r, c), cell in tab.get_celld().items():
            cell.set_edgecolor("#d9dde5")
            if r == 0:
                cell.set_text_props(weight="bold")
            if c == 0:
                cell.set_text_props(ha="left")
                cell._loc = "left"
        if title:
            ax.set_title(title)
        return figure_png(fig)


def detection_pr_png(curves: Mapping[str, PRCurve], *, limit: int = 12, iou_threshold: float = 0.5) -> bytes:
    """Precision-recall curve per label (the monotone, interpolated curve AP is the area under)."""
    shown = [(name, c) for name, c in curves.items() if c.average_precision is not None][:limit]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH * 0.6, 4.3))
        colours = charts.palette(max(1, len(shown)))
        for k, (name, c) in enumerate(shown):
            r = np.concatenate(([0.0], c.recall, [c.recall[-1] if len(c.recall) else 0.0]))
            p = np.concatenate(([c.precision[0] if len(c.precision) else 0.0], c.precision, [0.0]))
            p = np.maximum.accumulate(p[::-1])[::-1]
            ax.step(r, p, where="post", color=colours[k], lw=1.5, label=f"{name} (AP {c.average_precision:.3f})")
        ax.set(xlabel="recall", ylabel="precision", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
               title=f"precision-recall per label (IoU >= {iou_threshold:g})")
        if shown:
            ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        return figure_png(fig)


def ap_per_label_png(ap: Mapping[str, float | None]) -> bytes:
    """Horizontal bars of average precision per label (labels without ground truth are left out)."""
    items = [(k, v) for k, v in ap.items() if v is not None][::-1]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH * 0.6, max(1.6, 0.3 * len(items) + 0.9)))
        bars = ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
        ax.bar_label(bars, labels=[f"{v:.3f}" for _, v in items], padding=3, fontsize=9)
        ax.set_xlim(0, 1.08)
        ax.set_xlabel("average precision")
        fig.tight_layout()
        return figure_png(fig)


@dataclass
class Sample:
    """One image with its truth and the model's answer, in that image's pixels."""

    image: Image.Image
    title: str
    truth: Annotations
    predicted: Annotations
    correct: bool | None = None


def samples_png(samples: Sequence[Sample], classes: Sequence[str], *, size: int = 200) -> bytes:
    """One row per image: the true labels (boxes, masks) beside the predicted ones."""
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    for s in samples:
        mark = "" if s.correct is None else ("  (right)" if s.correct else "  (wrong)")
        rows.append([Tile(s.image, s.truth, ["truth", _labels_text(s.truth)]),
                     Tile(s.image, s.predicted, [f"predicted{mark}", _labels_text(s.predicted)],
                          caption_colour=(29, 36, 51) if s.correct in (None, True) else (200, 40, 40))])
    grid, _ = compose_grid(rows, index, size=size, row_titles=[s.title for s in samples])
    return image_png(grid)


def _labels_text(a: Annotations) -> str:
    if a.boxes is None:
        if a.scores is not None:
            return ", ".join(f"{lab} {sc:.2f}" for lab, sc in zip(a.labels, a.scores)) or "none"
        return ", ".join(a.labels) or "none"
    return f"{len(a.labels)} object(s)"
