"""The report's charts (matplotlib, Agg), each returned as PNG bytes sized for a laptop screen."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, MultipleLocator
from sklearn import metrics as skm

from automl_vision.report.html import figure_png, plt

STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "figure.dpi": 100, "savefig.facecolor": "white",
}
WIDTH = 10.0  # inches at 100 dpi: 1000 px, the page's content width
FAILED_COLOUR = "#9aa3b2"
NO_METRIC_Y = -0.14  # where trials without a metric end on the metric axis, below its range


def palette(n: int) -> list:
    """``n`` line colours, distinct for up to ten (twenty beyond that)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def class_histogram(counts: Counter, *, what: str = "images", limit: int = 40) -> bytes:
    """Horizontal bars, most frequent class on top; beyond ``limit`` classes the rest are summed."""
    items = counts.most_common()
    if len(items) > limit:
        rest = items[limit - 1:]
        items = items[:limit - 1] + [(f"{len(rest)} other classes", sum(c for _, c in rest))]
    names = [str(n) for n, _ in items][::-1]
    values = [c for _, c in items][::-1]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH * 0.62, max(1.6, 0.28 * len(names) + 0.9)))
        bars = ax.barh(names, values, color="#1f77b4")
        ax.bar_label(bars, padding=3, fontsize=9)
        ax.set_xlabel(f"{what} per class")
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.12)
        return figure_png(fig)


def image_sizes(sizes: Sequence[tuple[int, int]]) -> bytes:
    """Width against height, one dot per size, dot area by the number of images of that size."""
    counts = Counter(sizes)
    w = np.array([s[0] for s in counts])
    h = np.array([s[1] for s in counts])
    n = np.array(list(counts.values()), dtype=float)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH * 0.45, 3.4))
        ax.scatter(w, h, s=20 + 180 * n / n.max(), alpha=0.6, color="#1f77b4", edgecolor="white")
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        ax.set_title(f"{len(sizes)} images, {len(counts)} distinct sizes")
        return figure_png(fig)


@dataclass
class TrialCurve:
    """One trial's evaluations: ``epochs`` on x, ``values`` of a metric; how it ended."""

    name: str
    epochs: list[float]
    values: dict[str, list[float]]
    ended: str = ""  # "" | "policy" (cancelled by the sweep's rule) | "early_stopping" (the trial's own)
    best_epoch: float | None = None
    label: str = ""
    failed: bool = False
    extra: dict = field(default_factory=dict)


LOSSES = (("loss", "validation loss"), ("train_loss", "training loss"))


def learning_curves(curves: Sequence[TrialCurve], primary: str, *, top: int = 10) -> bytes:
    """The primary metric and the loss per epoch (validation loss where trials report it, else the
    training loss), one line per trial; a trial stopped by the sweep's early-termination rule ends
    with a red X, one stopped by its own early stopping with a black bar."""
    colours = palette(len(curves))
    show_legend = curves[:top]
    loss, loss_title = next(((k, t) for k, t in LOSSES if any(c.values.get(k) for c in curves)), LOSSES[0])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.9))
        for ax, metric, title in ((axes[0], primary, f"validation {primary}"), (axes[1], loss, loss_title)):
            for i, c in enumerate(curves):
                ys = c.values.get(metric)
                if not ys:
                    continue
                xs = c.epochs[:len(ys)]
                style = dict(color=colours[i], lw=1.8 if i < top else 0.8, alpha=1.0 if i < top else 0.5,
                             marker="o" if len(xs) <= 30 else None, ms=3)
                ax.plot(xs, ys, label=c.label if c in show_legend else None, **style)
                if c.ended == "policy":
                    ax.plot(xs[-1], ys[-1], marker="X", ms=11, color="#d62728", mec="white", mew=1, zorder=5)
                elif c.ended == "early_stopping":
                    ax.plot(xs[-1], ys[-1], marker="|", ms=14, mew=2.5, color="black", zorder=5)
                if metric == primary and c.best_epoch is not None and c.best_epoch in xs:
                    ax.plot(c.best_epoch, ys[xs.index(c.best_epoch)], marker="*", ms=9, color=colours[i],
                            mec="black", mew=0.5, zorder=4)
            ys_all = [y for c in curves for y in c.values.get(metric, []) if math.isfinite(y)]
            if metric == loss and ys_all and min(ys_all) > 0 and max(ys_all) / min(ys_all) > 50:
                ax.set_yscale("log")  # one diverging trial would flatten every other curve
                title += " (log scale)"
            ax.set_title(title)
            ax.set_xlabel("epoch")
            last = max((max(c.epochs) for c in curves if c.epochs), default=1)
            ax.set_xlim(0.5, last + 0.5)
            ax.xaxis.set_major_locator(MultipleLocator(max(1, math.ceil(last / 10))))
        handles, labels = axes[0].get_legend_handles_labels()
        marks = [Line2D([], [], ls="", marker="*", ms=9, color="#777", mec="black", mew=0.5, label="best epoch")]
        if any(c.ended == "policy" for c in curves):
            marks.append(Line2D([], [], ls="", marker="X", ms=10, color="#d62728", label="stopped by the sweep's rule"))
        if any(c.ended == "early_stopping" for c in curves):
            marks.append(Line2D([], [], ls="", marker="|", ms=12, mew=2.5, color="black", label="early stopping"))
        fig.legend(handles + marks, labels + [m.get_label() for m in marks], loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles) + len(marks)), frameon=False)
        fig.tight_layout()
        return figure_png(fig)


@dataclass
class Axis:
    name: str
    values: list  # one per trial (None: not set for that trial)
    categorical: bool
    log: bool = False


def hyperparameter_axes(params: Sequence[Mapping], names: Sequence[str]) -> list[Axis]:
    axes = []
    for name in names:
        values = [p.get(name) for p in params]
        present = [v for v in values if v is not None]
        categorical = not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
        log = (not categorical and present and min(present) > 0 and max(present) / min(present) >= 20)
        axes.append(Axis(name, values, categorical, bool(log)))
    return axes


def _position(axis: Axis) -> tuple[list[float | None], list[float], list[str]]:
    """Each trial's place on ``axis`` in [0, 1], and the axis ticks (positions and labels)."""
    present = [v for v in axis.values if v is not None]
    if axis.categorical:
        cats = sorted({str(v) for v in present})
        step = 1 / max(1, len(cats) - 1)
        where = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        return [where[str(v)] if v is not None else None for v in axis.values], list(where.values()), cats
    f = (lambda v: math.log10(v)) if axis.log else (lambda v: float(v))
    lo, hi = min(f(v) for v in present), max(f(v) for v in present)
    span = hi - lo

    def place(v):
        return 0.5 if span == 0 else (f(v) - lo) / span

    ticks = sorted(set(present))
    if len(ticks) > 6:
        grid = np.linspace(lo, hi, 5)
        ticks = [10 ** g if axis.log else g for g in grid]
    return ([place(v) if v is not None else None for v in axis.values], [place(t) for t in ticks],
            [f"{t:.3g}" for t in ticks])


def parallel_coordinates(axes: Sequence[Axis], metric: Sequence[float | None], metric_name: str,
                         maximize: bool = True) -> bytes:
    """One vertical axis per hyperparameter and a last one for the metric; one line per trial,
    coloured by its metric (trials without a metric: grey, dashed, ending at the bottom)."""
    known = [m for m in metric if m is not None and math.isfinite(m)]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    span = hi - lo or 1.0
    cmap = plt.get_cmap("viridis" if maximize else "viridis_r")
    cols = [_position(a) for a in axes]
    n = len(axes) + 1
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH, 4.2))
        order = sorted(range(len(metric)), key=lambda i: -math.inf if metric[i] is None else metric[i] * (1 if maximize else -1))
        for i in order:
            ys = [c[0][i] for c in cols]
            m = metric[i]
            ok = m is not None and math.isfinite(m)
            ys.append((m - lo) / span if ok and hi > lo else (0.5 if ok else NO_METRIC_Y))
            xs = [k for k, y in enumerate(ys) if y is not None]
            ys = [y for y in ys if y is not None]
            shade = (m - lo) / span if ok and hi > lo else 0.5
            ax.plot(xs, ys, color=cmap(shade) if ok else FAILED_COLOUR, lw=2.2 if ok else 1.2,
                    ls="-" if ok else "--", alpha=0.9, marker="o", ms=4)
        for k, (a, (_, pos, labels)) in enumerate(zip(axes, cols)):
            ax.axvline(k, color="#444", lw=1)
            for p, text in zip(pos, labels):
                ax.text(k + 0.03, p, text, va="center", fontsize=8.5,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
        ax.axvline(n - 1, color="#444", lw=1)
        ticks = [v for v in MaxNLocator(5).tick_values(lo, hi) if lo <= v <= hi] if hi > lo else [lo]
        for v in ticks:
            ax.text(n - 1 + 0.03, (v - lo) / span if hi > lo else 0.5, f"{v:.3g}", va="center", fontsize=8.5)
        if any(m is None or not math.isfinite(m) for m in metric):
            ax.text(n - 1 + 0.03, NO_METRIC_Y, "no metric", va="center", fontsize=8.5, color="#666")
        ax.set_xticks(range(n), [a.name + (" (log)" if a.log else "") for a in axes] + [metric_name])
        ax.set_yticks([])
        ax.set_xlim(-0.1, n - 0.6)
        ax.set_ylim(NO_METRIC_Y - 0.06, 1.06)
        ax.grid(False)
        for s in ("left", "bottom"):
            ax.spines[s].set_visible(False)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi) if hi > lo else plt.Normalize(lo - 0.5, lo + 0.5))
        fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.03).set_label(metric_name)
        return figure_png(fig)


def metric_scatter(axes: Sequence[Axis], metric: Sequence[float | None], metric_name: str) -> bytes:
    """One small panel per hyperparameter: its value (x) against the metric (y), one dot per trial."""
    n = len(axes)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    with plt.rc_context(STYLE):
        fig, grid = plt.subplots(rows, cols, figsize=(min(WIDTH, 3.6 * cols + 0.6), 2.9 * rows), squeeze=False)
        for k, a in enumerate(axes):
            ax = grid[k // cols][k % cols]
            pts = [(v, m) for v, m in zip(a.values, metric) if v is not None and m is not None and math.isfinite(m)]
            if a.categorical:
                cats = sorted({str(v) for v, _ in pts} | {str(v) for v in a.values if v is not None})
                xs = [cats.index(str(v)) for v, _ in pts]
                ax.set_xticks(range(len(cats)), cats, rotation=20 if len(cats) > 3 else 0)
            else:
                xs = [v for v, _ in pts]
                if a.log:
                    ax.set_xscale("log")
                distinct = sorted({v for v in a.values if v is not None})
                if len(distinct) <= 6:  # label the values tried, not a grid of numbers that collide
                    ax.set_xticks(distinct, [f"{v:.3g}" for v in distinct], rotation=30 if len(distinct) > 3 else 0)
                    ax.xaxis.set_minor_locator(plt.NullLocator())
                else:
                    ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.scatter(xs, [m for _, m in pts], color="#1f77b4", s=36, alpha=0.8, edgecolor="white")
            ax.set_xlabel(a.name)
            if k % cols == 0:
                ax.set_ylabel(metric_name)
        for k in range(n, rows * cols):
            grid[k // cols][k % cols].set_visible(False)
        fig.tight_layout()
        return figure_png(fig)


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str]) -> bytes:
    """Rows: true class; columns: predicted class. Colour: share of the true class; text: counts."""
    n = len(classes)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = min(9.0, max(3.6, 0.45 * n + 2.2))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(side + 1.0, side))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)
        ax.set_xticks(range(n), classes, rotation=45 if max(len(c) for c in classes) > 3 else 0, ha="right")
        ax.set_yticks(range(n), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if n <= 25:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8 if n > 12 else 9,
                                color="white" if share[i, j] > 0.5 else "#1d2433")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("share of the true class")
        return figure_png(fig)


def roc_pr_curves(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, limit: int = 10) -> bytes:
    """One-vs-rest ROC and precision-recall curves per class (``targets``: (N, C) 0/1), plus micro average."""
    present = [c for c in range(len(classes)) if 0 < targets[:, c].sum() < len(targets)]
    shown = present[:limit]
    colours = palette(len(shown))
    legend_rows = math.ceil((len(shown) + 1) / 2)
    with plt.rc_context(STYLE):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(WIDTH, 4.0 + 0.2 * legend_rows))
        for k, c in enumerate(shown):
            fpr, tpr, _ = skm.roc_curve(targets[:, c], probs[:, c])
            a1.plot(fpr, tpr, color=colours[k], lw=1.4, label=f"{classes[c]} (AUC {skm.auc(fpr, tpr):.3f})")
            p, r, _ = skm.precision_recall_curve(targets[:, c], probs[:, c])
            ap = skm.average_precision_score(targets[:, c], probs[:, c])
            a2.plot(r, p, color=colours[k], lw=1.4, label=f"{classes[c]} (AP {ap:.3f})")
        if present:
            t, p_ = targets[:, present].ravel(), probs[:, present].ravel()
            fpr, tpr, _ = skm.roc_curve(t, p_)
            a1.plot(fpr, tpr, color="black", lw=2.2, ls="--", label=f"micro average (AUC {skm.auc(fpr, tpr):.3f})")
            pr, rc, _ = skm.precision_recall_curve(t, p_)
            a2.plot(rc, pr, color="black", lw=2.2, ls="--",
                    label=f"micro average (AP {skm.average_precision_score(t, p_):.3f})")
        a1.plot([0, 1], [0, 1], color="#bbb", lw=1)
        a1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one class against the rest)",
               xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        a2.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        for a in (a1, a2):  # under each chart: a legend inside would hide the curves
            if a.get_legend_handles_labels()[0]:  # none when no class has both kinds of images
                a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
        fig.tight_layout()
        return figure_png(fig)
