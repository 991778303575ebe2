"""The run report: one self-contained ``report.html`` a person reads to judge a run.

    write_report("runs/my-run", score_model=evaluate_model)  ->  runs/my-run/report.html

It reads only the run folder (job.yaml, leaderboard.json, trials/*/metrics.jsonl and result.json,
sweep.json when the sweep wrote one, best_model/; through ``training.runfolder``) and the data the job
names, and scores the best model again with the scorer it is given (``rescore``). Where those live
elsewhere (the pipeline's report step: the ingested dataset and the evaluate step's output are
artifacts of their own), ``training_data`` and ``evaluation`` say where, and the best model is not
scored a second time.

Sections: summary and job, data (class histogram, image sizes, augmented samples), leaderboard
(sortable), learning curves with early terminations marked and the rule that ended them,
hyperparameters against the primary metric, the best model's evaluation pictures, predictions
drawn on validation images, and explanations of a few of them (right and wrong) when the evaluation
wrote them. Images are inline PNG (``data:`` URIs) and the only script is the
table sorter: the file opens with no network, and in the Kubeflow Pipelines UI's HTML viewer.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from automl_vision.data.images import as_displayed
from automl_vision.data.manifest import is_manifest
from automl_vision.errors import AutoMLError
from automl_vision.explain.pictures import EXPLANATIONS_DIR, INDEX_FILE
from automl_vision.models.catalogue import licence_text
from automl_vision.report import charts
from automl_vision.report import html as H
from automl_vision.report.data_summary import DataSummary, summarize_data
from automl_vision.report.draw import Annotations, Tile, compose_grid
from automl_vision.report.preview import preview_rows, supported
from automl_vision.report.rescore import Evaluation, ScoreModel, Scores, evaluate_best, given_evaluation
from automl_vision.spec.tasks import ImageTask
from automl_vision.training.runfolder import RunData, TrialView, load_run, read_json

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
#: Key added to the job shown: the training data as the user gave it, when the run read an ingested copy.
SOURCE_KEY = "source_training_data"
PREDICTION_TILES = 12
PREVIEW_SAMPLES = 8
FAILED_STATUSES = frozenset({"failed", "diverged", "timeout"})


def _own_early_stopping_rule(t: TrialView, primary: str) -> str:
    hp = t.hyperparameters
    patience, delay = hp.get("early_stopping_patience"), hp.get("early_stopping_delay")
    if patience is None:
        return f"early stopping: {primary} stopped improving"
    return (f"early stopping: {primary} did not improve for {patience} evaluations "
            f"(tracked after the first {delay}); best {H.fmt_number(t.best_value)} at epoch {t.best_epoch}")


def _ended_by(t: TrialView, primary: str) -> str:
    """The rule that ended the trial, in words ("" when it ran to the end)."""
    if t.ended == "early_stopping":
        return _own_early_stopping_rule(t, primary)
    if t.ended == "policy":
        return t.stop_reason or t.message or "stopped by the sweep's early-termination rule"
    return ""


# --- sections ------------------------------------------------------------------------------------

def _policy_text(policy: dict[str, Any] | None) -> str:
    if not policy:
        return "none (every trial runs to its end)"
    kind = policy.get("type", "?")
    rest = ", ".join(f"{k} {v}" for k, v in policy.items() if k != "type" and v is not None)
    return f"{kind} ({rest})" if rest else kind


def _summary(run: RunData) -> H.Section:
    statuses = Counter(t.status for t in run.trials)
    best = run.best
    total = sum(t.duration_s for t in run.trials)
    cards = [("task", run.task.value), ("primary metric", f"{run.primary} ({'higher' if run.maximize else 'lower'} is better)"),
             ("best " + run.primary, H.fmt_number(best.best_value) if best else "none"),
             ("best trial", f"{best.trial_id} ({best.model_name})" if best else "no trial produced a model"),
             ("trials", ", ".join(f"{n} {s}" for s, n in statuses.most_common()) or "none"),
             ("training time", f"{total / 60:.1f} min" if total >= 60 else f"{total:.0f} s")]
    job = run.job
    sweep = job.get("sweep") or {}
    limits = job.get("limits") or {}
    facts = [
        ("job name", job.get("name") or "-"),
        ("training data", _training_data_text(job)),
        ("validation data", job.get("validation_data") or _validation_text(job.get("training_data"))),
        ("sampling", sweep.get("sampling_algorithm", "random")),
        ("early termination", _policy_text(sweep.get("early_termination"))),
        ("limits", ", ".join(f"{k} {v}" for k, v in limits.items() if v is not None)),
        ("fixed for every trial", ", ".join(f"{k} {v}" for k, v in (job.get("training_parameters") or {}).items()) or "-"),
        *_sweep_facts(run.sweep_info),
        ("run folder", str(run.run_dir.resolve())),
    ]
    if best is not None:
        facts.append(("best model's licences", licence_text(best.model_name, best.hyperparameters)))
    space = yaml.safe_dump(job.get("search_space") or [], sort_keys=False).strip()
    body = (H.cards(cards)
            + "<p>How to read this report: the <b>leaderboard</b> ranks the trials (each trial trains one model "
              "with one set of hyperparameters); <b>learning curves</b> show how each trial improved epoch by "
              "epoch and where trials were stopped early; <b>hyperparameters</b> show which settings did well; "
              "the last two sections show how the best model does on validation images it never trained on.</p>"
            + "<h3>The job</h3>" + H.key_values(facts)
            + f"<h3>Search space</h3><pre>{H.esc(space or '[] (every trial uses the defaults)')}</pre>")
    return H.Section("summary", "Summary", body)


def _sweep_facts(info: dict[str, Any]) -> list[tuple[str, str]]:
    """AutoMode, the warm start, the budget and the compute the sweep used, as sweep.json records them."""
    facts = []
    automode = info.get("automode")
    if isinstance(automode, dict) and automode.get("summary"):
        facts.append(("search space", f"{automode['summary']}; the entries are below"))
    warm = info.get("warm_start")
    if isinstance(warm, dict):
        seeds = warm.get("seeds") or []
        facts.append(("warm start", f"the first {len(seeds)} trial(s) took the best settings of "
                                    f"{warm.get('runs_used', 0)} similar earlier run(s) ({warm.get('runs_read', 0)} read)"
                      if seeds else f"no usable settings in {warm.get('runs_read', 0)} earlier run(s)"))
    budget = info.get("budget")
    if isinstance(budget, dict):
        facts.append(("budget", f"{budget.get('used', 0):.4g} of {budget.get('budget')} {budget.get('unit', '')} used"))
    compute = info.get("compute")
    if isinstance(compute, dict) and compute.get("trial_epochs") is not None:
        text = (f"{compute['trial_epochs']} trial-epoch(s), {compute.get('trial_seconds', 0):.0f} trial-seconds"
                + (f", {compute['device_hours']:.4g} device-hour(s)" if compute.get("device_hours") is not None else ""))
        full = compute.get("trial_epochs_without_early_termination")
        if full and full != compute["trial_epochs"]:
            text += f"; {full} trial-epoch(s) without early termination ({compute.get('saved_share', 0):.0%} saved)"
        facts.append(("compute used", text))
    if info.get("stopped_because"):
        facts.append(("sweep stopped", str(info["stopped_because"])))
    return facts


def _training_data_text(job: dict) -> str:
    given, read = job.get(SOURCE_KEY), job.get("training_data", "-")
    return f"{given} (ingested into {read})" if given and given != read else read


def _validation_text(training_data: str | None) -> str:
    if training_data and is_manifest(training_data):
        return "the validation split of the ingested dataset"
    return "a split of the training data (split_ratio of each trial)"


def _data_section(run: RunData) -> H.Section:
    parts = []
    detection = not run.task.is_classification
    for what, path in (("training data", run.job.get("training_data")), ("validation data", run.job.get("validation_data"))):
        if not path:
            continue
        try:
            s = summarize_data(path, run.task)
        except AutoMLError as e:
            parts.append(f"<h3>{H.esc(what.capitalize())}</h3>" + H.note(f"cannot read {path}: {e}"))
            continue
        if what == "training data" and run.job.get(SOURCE_KEY):
            s = dataclasses.replace(s, source=run.job[SOURCE_KEY])
        parts.append(_data_block(what, s, detection))
    parts.append(_preview_block(run))
    return H.Section("data", "Data", "".join(parts))


def _data_block(what: str, s: DataSummary, detection: bool) -> str:
    items = [("images", s.images), ("classes", len(s.class_counts))]
    if detection:
        items.append(("objects", s.objects))
    if s.no_label:
        items.append(("images with no label", s.no_label))
    out = f"<h3>{H.esc(what.capitalize())}: {H.esc(s.source)}</h3>" + H.cards(items)
    if s.unreadable_lines or s.missing_images:
        out += H.note(f"{s.unreadable_lines} line(s) could not be read and {s.missing_images} image(s) could not "
                      "be opened; they are left out of the counts below.")
    if s.class_counts:
        out += H.img(charts.class_histogram(s.class_counts, what="objects" if detection else "images"),
                     f"class histogram of the {what}",
                     H.esc(f"{'Objects' if detection else 'Images'} per class in the {what}. A class much rarer than "
                           "the others is learnt less well; weighted_loss can compensate."))
    if s.sizes:
        distinct = Counter(s.sizes)
        sampled = " (a sample of the images)" if s.sizes_sampled else ""
        if len(distinct) == 1:
            (w, h), = distinct
            out += f"<p>Image size: all {len(s.sizes)} images{sampled} are {w}x{h} pixels.</p>"
        else:
            ws, hs = [x[0] for x in s.sizes], [x[1] for x in s.sizes]
            out += H.img(charts.image_sizes(s.sizes), f"image sizes of the {what}",
                         H.esc(f"Image sizes{sampled}: width {min(ws)} to {max(ws)} px, height {min(hs)} to "
                               f"{max(hs)} px."), width=460)
    return out


def _preview_block(run: RunData) -> str:
    source = run.best or next((t for t in run.trials if t.hyperparameters), None)
    head = "<h3>What the model was fed</h3>"
    if source is None or not run.job.get("training_data"):
        return head + H.note("No trial recorded its settings, so there is no augmentation to show.")
    hp = source.hyperparameters
    model = hp.get("model_name", source.model_name)
    if model not in supported(run.task):
        return head + H.note(f"No augmentation preview for {model} ({run.task.value}) yet.")
    given = {k: v for k, v in hp.items() if k != "model_name"}
    try:
        chosen, rows, _, _ = preview_rows(run.job["training_data"], run.task, count=PREVIEW_SAMPLES, draws=4,
                                          model_name=model, hyperparameters=given)
    except AutoMLError as e:
        return head + H.note(f"Cannot draw the augmented samples: {e}")
    classes = sorted({lab for r in rows for t in r for lab in t.annotations.labels})
    grid, _ = compose_grid(rows, {c: i for i, c in enumerate(classes)}, size=144,
                           row_titles=[Path(c.image_path).name for c in chosen])
    return head + H.img(H.image_png(grid), "augmented training samples",
                        H.esc(f"Training images of {source.trial_id} ({model}): the original, then draws of the "
                              "train-time augmentation exactly as the model receives them (any normalization "
                              "undone for display). automl-vision preview draws more."))


def _varied_parameters(trials: list[TrialView]) -> list[str]:
    names: list[str] = []
    for t in trials:
        for k in t.parameters:
            if k not in names:
                names.append(k)
    return [n for n in names if len({json.dumps(t.parameters.get(n), sort_keys=True) for t in trials}) > 1]


def _leaderboard(run: RunData) -> H.Section:
    varied = [n for n in _varied_parameters(run.trials) if n != "model_name"]  # the model column shows it
    headers: list = [("rank", True), "trial", "status", "model", (run.primary, True), ("best epoch", True),
                     ("epochs", True), ("time s", True)]
    headers += [(n, True) if all(isinstance(t.parameters.get(n), (int, float)) and not isinstance(t.parameters.get(n), bool)
                                 for t in run.trials if t.parameters.get(n) is not None) else n for n in varied]
    headers.append("why it ended")
    rows, css = [], []
    for t in run.trials:
        cells = [H.Cell(str(t.rank) if t.rank else "-", t.rank, True), H.Cell(t.trial_id, css="nowrap"),
                 H.Cell(t.status, css="bad" if t.status in FAILED_STATUSES else ""), H.Cell(t.model_name or "-"),
                 H.Cell(H.fmt_number(t.best_value), t.best_value if _finite(t.best_value) else None, True),
                 H.Cell(H.fmt_number(t.best_epoch), t.best_epoch, True),
                 H.Cell(str(t.epochs_completed), t.epochs_completed, True),
                 H.Cell(f"{t.duration_s:.1f}", t.duration_s, True)]
        for n in varied:
            v = t.parameters.get(n)
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(H.Cell(H.fmt_number(v), v if numeric else None, numeric))
        cells.append(H.Cell(_ended_by(t, run.primary) or t.message, css="why"))
        rows.append(cells)
        css.append("best" if t.rank == 1 else "")
    body = (H.table(headers, rows, sortable=True, row_css=css, table_id="leaderboard-table")
            + H.note("Click a column title to sort by it. The best trial is highlighted; "
                     f"ties in {run.primary} go to the earlier trial."))
    return H.Section("leaderboard", "Leaderboard", body)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _curves(run: RunData) -> H.Section:
    curves = []
    ordered = sorted(run.trials, key=lambda t: (t.rank is None, t.rank or 0, t.trial_id))
    for t in ordered:
        if not t.evaluations:
            continue
        epochs = [float(e.get("epoch", i + 1)) for i, e in enumerate(t.evaluations)]
        values = {}
        for key in (run.primary, "loss", "train_loss"):
            ys = [e.get(key) for e in t.evaluations]
            if all(isinstance(y, (int, float)) for y in ys):
                values[key] = [float(y) for y in ys]
        curves.append(charts.TrialCurve(t.trial_id, epochs, values, t.ended,
                                   float(t.best_epoch) if t.best_epoch is not None else None,
                                   f"{t.trial_id} {t.model_name}".strip()))
    if not curves:
        return H.Section("curves", "Learning curves", H.note("No trial reported an evaluation."))
    body = H.img(charts.learning_curves(curves, run.primary), "learning curves of every trial",
                 H.esc(f"Validation {run.primary} (left) and the loss (right: validation loss where the trials "
                       "report it, else training loss) after each evaluation, one line per trial (legend: best "
                       "trials first). A star marks each trial's best epoch (the one its model was saved from)."))
    stopped = [t for t in run.trials if t.ended]
    if stopped:
        rows = [[H.Cell(t.trial_id), H.Cell("stopped by the sweep's rule" if t.ended == "policy" else "its own early stopping"),
                 H.Cell(str(t.epochs_completed), t.epochs_completed, True), H.Cell(_ended_by(t, run.primary))] for t in stopped]
        body += "<h3>Trials that ended early</h3>" + H.table(["trial", "how", ("after epoch", True), "rule"], rows)
    else:
        body += H.note("Every trial ran to its last epoch (none was stopped early).")
    return H.Section("curves", "Learning curves", body)


def _hyperparameters(run: RunData) -> H.Section:
    varied = _varied_parameters(run.trials)
    title = f"Hyperparameters against {run.primary}"
    scored = [t for t in run.trials if _finite(t.best_value)]
    if not varied:
        return H.Section("hyperparameters", title, H.note("No hyperparameter varied between trials."))
    if not scored:
        return H.Section("hyperparameters", title, H.note("No trial produced a metric to compare."))
    params = [t.parameters for t in run.trials]
    metric = [t.best_value if _finite(t.best_value) else None for t in run.trials]
    axes = charts.hyperparameter_axes(params, varied)
    body = (H.img(charts.parallel_coordinates(axes, metric, run.primary, run.maximize),
                  "parallel coordinates of hyperparameters and the primary metric",
                  H.esc(f"One line per trial through its hyperparameter values to its best {run.primary} (last "
                        "axis); colour follows the metric. Trials without a metric are grey and dashed."))
            + H.img(charts.metric_scatter(axes, metric, run.primary), "each hyperparameter against the metric",
                    H.esc(f"Each hyperparameter that varied, against the trial's best {run.primary}.")))
    return H.Section("hyperparameters", title, body)


#: The evaluation's pictures shown in the report, in this order (those the task produces).
EVALUATION_PICTURES = (
    ("confusion_matrix.png", "Confusion matrix: rows are the true class, columns the predicted one; the diagonal is "
                             "right."),
    ("roc_pr_curves.png", "ROC and precision-recall curves, each class against the rest, and their micro average."),
    ("pr_curves.png", "Precision-recall curve of each label (a prediction is right when it overlaps a true box of "
                      "its label enough)."),
    ("ap_per_label.png", "Average precision of each label."),
)




def _evaluation_and_predictions(run: RunData, given: Evaluation | None = None,
                                score_model: ScoreModel | None = None) -> list[H.Section]:
    best = run.best
    title_e, title_p = "Best model evaluation", "Sample predictions"
    if best is None:
        msg = H.note("No trial produced a model, so there is nothing to evaluate.")
        return [H.Section("evaluation", title_e, msg), H.Section("predictions", title_p, msg)]
    package_dir = run.run_dir / "best_model"
    intro = H.note(f"The best model is {best.trial_id} ({best.model_name}), saved at epoch {best.best_epoch}; its "
                   f"package is {package_dir}.")
    metrics = read_json(package_dir / "metrics.json", {}) or {}
    metric_table = ""
    scalars = {k: v for k, v in metrics.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
        keys = sorted(scalars, key=lambda k: (k != run.primary, k))
        table = H.table(["metric", ("value", True)],
                        [[H.Cell(k), H.Cell(H.fmt_number(scalars[k]), scalars[k], True)] for k in keys])
        metric_table = (f"<h3>Metrics the trial recorded for that epoch</h3><p>{H.esc(run.primary)}: "
                        f"<b>{H.fmt_number(metrics.get(run.primary))}</b>.</p>"
                        f"<details><summary>All {len(keys)} metrics</summary>{table}</details>")
    if given is None and score_model is None:
        msg = H.note("The best model was not scored for this report (neither an evaluation nor a scorer was given).")
        return [H.Section("evaluation", title_e, intro + msg + metric_table), H.Section("predictions", title_p, msg)]
    try:
        ev = given_evaluation(given) if given is not None else evaluate_best(run, best, score_model)
    except AutoMLError as e:
        msg = H.note(f"Cannot score the best model on its validation images: {e}")
        return [H.Section("evaluation", title_e, intro + msg + metric_table), H.Section("predictions", title_p, msg)]
    if ev.scored_by:
        body = intro + H.note(f"Scored by {ev.scored_by} on the {ev.images} validation images of {ev.data}; "
                              f"all files are in {ev.folder}.")
    else:
        capped = f" (the first {ev.images} of {ev.total})" if ev.images < ev.total else ""
        body = intro + H.note(f"Scored again for this report on the {ev.images} validation images{capped} of "
                              f"{best.trial_id}'s own split ({ev.data}); all files are in {ev.folder}.")
    primary_value = ev.metrics.get(run.primary)
    if isinstance(primary_value, (int, float)):
        body += H.cards([(run.primary, H.fmt_number(float(primary_value))), ("validation images", ev.images)])
    for name, caption in EVALUATION_PICTURES:
        if name == "confusion_matrix.png" and run.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL:
            caption = "Confusion matrix of each label at the 0.5 threshold (true against predicted, yes or no)."
        if (ev.folder / name).is_file():
            body += H.img((ev.folder / name).read_bytes(), name.removesuffix(".png").replace("_", " "), H.esc(caption))
    body += _per_class_table(ev.folder / "per_class.csv") + metric_table
    predictions = ""
    if run.task.is_classification:
        # "" when none of the images opens here (remote images): then the evaluation's own samples.png
        predictions = _classification_grid(ev, multilabel=run.task is ImageTask.IMAGE_CLASSIFICATION_MULTILABEL)
    if not predictions and (ev.folder / "samples.png").is_file():
        what = "labels" if run.task.is_classification else "objects"
        predictions = H.img((ev.folder / "samples.png").read_bytes(), "predictions on validation images",
                            f"Validation images: the true {what} (left) beside the model's predictions (right) with "
                            "their scores.")
    if not predictions:
        predictions = H.note("The evaluation drew no sample images.")
    sections = [H.Section("evaluation", title_e, body), H.Section("predictions", title_p, predictions)]
    explanations = _explanations_section(ev.folder / EXPLANATIONS_DIR, run.task)
    return sections + ([explanations] if explanations else [])


_METHOD_TITLES = {"xrai": "XRAI", "integrated_gradients": "integrated gradients", "guided_gradcam": "guided Grad-CAM",
                  "guided_backprop": "guided backprop", "d_rise": "D-RISE"}


def _explanations_section(folder: Path, task: ImageTask) -> H.Section | None:
    """The evaluation's explanations (``explanations/explanations.json``), when it wrote any."""
    index = read_json(folder / INDEX_FILE, None)
    if not isinstance(index, dict) or not index.get("explanations"):
        return None
    params = index.get("parameters") or {}
    method = params.get("xai_algorithm", "")
    title = _METHOD_TITLES.get(method, method)
    hidden = {"xai_algorithm", "visualizations", "attributions"}
    if task is not ImageTask.IMAGE_CLASSIFICATION_MULTILABEL:
        hidden.add("confidence_score_threshold_multilabel")
    settings = ", ".join(f"{k} {v}" for k, v in params.items() if k not in hidden)
    if task.is_classification:
        intro = (f"Why the best model answered as it did, for its most confident right and wrong answers on "
                 f"validation images: {title} ({settings}) for the predicted class. Each picture: the crop the model "
                 "saw (top left), the attributions (top right; bright: drove the answer most), both blended "
                 "(bottom left), and the 30% most attributed pixels (bottom right).")
    else:
        intro = (f"Why the best model found its highest-scoring box, on validation images where it was right and "
                 f"where it was wrong: {title} ({settings}). Left: the image and the box; right: the box's saliency "
                 "(bright: hiding these pixels loses the box most).")
        masks = params.get("num_masks")
        if isinstance(masks, int) and masks < 100:
            intro += (f" With {masks} masks (what a run on a CPU affords) the map is rough: bright patches away from "
                      "the box may be chance; a run on a GPU uses 200, and automl-vision predict --explain d_rise "
                      "takes more.")
    body = H.note(intro)
    for e in index["explanations"]:
        path = folder / str(e.get("picture", ""))
        if not path.is_file():
            continue
        verdict = "right" if e.get("correct") else "wrong"
        truth = ", ".join(e.get("truth") or []) or "none"
        predicted = ", ".join(e.get("predicted") or []) or "none"
        caption = (f"<b>{verdict}</b>: {H.esc(str(e.get('image_url')))}; true {H.esc(truth)}, predicted "
                   f"{H.esc(predicted)}; explained: {H.esc(str(e.get('explained')))} ({e.get('score')})")
        body += H.img(path.read_bytes(), f"{title} explanation", caption, width=360)
    return H.Section("explanations", "Explanations", body)


def _per_class_table(path: Path) -> str:
    if not path.is_file():
        return ""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return ""
    head, body = rows[0], rows[1:]

    def cell(x: str) -> H.Cell:
        try:
            return H.Cell(x, float(x), True)
        except ValueError:
            return H.Cell(x)

    # the first column names the class (even when class names are digits)
    numeric = [i > 0 and all(_is_number(r[i]) for r in body if i < len(r)) for i in range(len(head))]
    return ("<h3>Per class</h3>" + H.table([(h, n) if n else h for h, n in zip(head, numeric)],
                                           [[cell(x) if numeric[i] else H.Cell(x) for i, x in enumerate(r)]
                                            for r in body], sortable=True))


def _is_number(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _classification_grid(ev: Scores, *, multilabel: bool) -> str:
    """Validation images with the model's answer and the truth, mistakes first (from predictions.jsonl);
    "" when none of the chosen images can be opened on this machine."""
    def url_key(url: str, base: Path) -> str:
        return url if "://" in url or os.path.isabs(url) else str((base / url).resolve())

    truth = {}
    for ln in ev.data.read_text(encoding="utf-8").splitlines():
        if ln.strip():
            row = json.loads(ln)
            label = row.get("label")
            truth[url_key(row["image_url"], ev.data.resolve().parent)] = [label] if isinstance(label, str) else list(label or [])
    entries = []
    pred_file = ev.folder / "predictions.jsonl"
    for ln in pred_file.read_text(encoding="utf-8").splitlines() if pred_file.is_file() else []:
        if not ln.strip():
            continue
        row = json.loads(ln)
        key = url_key(row["image_url"], pred_file.parent)
        probs, labels = row.get("probs") or [], row.get("labels") or []
        if key not in truth or not probs:
            continue
        if not multilabel:
            best = int(np.argmax(probs))
            predicted = [(labels[best], probs[best])]
        else:
            predicted = [(lab, p) for lab, p in zip(labels, probs) if p >= 0.5]
        right = sorted(lab for lab, _ in predicted) == sorted(truth[key])
        entries.append((key, predicted, truth[key], right))
    if not entries:
        return H.note("The evaluation wrote no predictions to show.")
    wrong = [e for e in entries if not e[3]]
    right = [e for e in entries if e[3]]
    rng = np.random.default_rng(0)
    k_wrong = min(len(wrong), PREDICTION_TILES // 2)
    k_right = min(len(right), PREDICTION_TILES - k_wrong)
    k_wrong = min(len(wrong), PREDICTION_TILES - k_right)
    chosen = ([wrong[i] for i in sorted(rng.choice(len(wrong), k_wrong, replace=False))] if k_wrong else []) + \
             ([right[i] for i in sorted(rng.choice(len(right), k_right, replace=False))] if k_right else [])
    tiles = []
    k_wrong = k_right = 0
    for key, predicted, true, ok in chosen:
        try:
            with Image.open(key) as im:
                image = as_displayed(im).convert("RGB")
        except OSError:  # an s3:// URI, or a file this machine does not have
            continue
        k_right, k_wrong = k_right + ok, k_wrong + (not ok)
        shown = ", ".join(f"{lab} {p:.2f}" for lab, p in predicted) or "(no label)"
        tiles.append(Tile(image, Annotations([]), [("right: " if ok else "wrong: ") + shown,
                                                   "true: " + (", ".join(true) or "(no label)")],
                          caption_colour=(27, 127, 59) if ok else (179, 38, 30)))
    if not tiles:
        return ""
    grid, _ = compose_grid([tiles[i:i + 6] for i in range(0, len(tiles), 6)], {}, size=150)
    caption = (f"{k_wrong} of the {len(wrong)} validation images the model gets wrong, then {k_right} of the "
               f"{len(right)} it gets right (picked at random). First line: the prediction and its probability; "
               "second line: the true label.")
    return H.img(H.image_png(grid), "predictions on validation images", H.esc(caption))


def _registry_section(registration: dict[str, Any]) -> H.Section:
    """The registered version and the champion/challenger gate's decision (the pipeline's register step)."""
    decision = registration.get("decision") or {}
    if not registration.get("version"):
        return H.Section("registry", "Model registry", H.note(H.esc(decision.get("reason") or "not registered")))
    promoted = bool(registration.get("champion"))
    metric = decision.get("metric", "")
    cards = [("registered model", registration.get("registered_model", "")),
             ("version", registration["version"]),
             ("gate", "promoted to champion" if promoted else "not promoted"),
             (f"this model's {metric}", H.fmt_number(decision.get("value"))),
             (f"champion's {metric}", H.fmt_number(decision.get("champion_value"))
              if decision.get("champion_version") else "no champion")]
    metadata = registration.get("metadata") or {}
    facts = [("registry", registration.get("registry", "")),
             ("why", decision.get("reason", "")),
             ("champion compared", f"version {decision['champion_version']}" if decision.get("champion_version")
              else "none"),
             ("margin", f"{decision.get('margin_points', 0):g} points"),
             ("model artifact", registration.get("uri") or "-"),
             ("data manifest sha256", metadata.get("data_manifest_sha256") or "-"),
             ("run id", metadata.get("run_id") or "-")]
    body = (H.cards(cards)
            + "<p>Each run registers its best model as a new version; it becomes the <b>champion</b> (what a "
              "deploy serves) only when it scores better than the current champion on the same validation "
              "images, by more than the margin.</p>" + H.key_values(facts))
    return H.Section("registry", "Model registry", body)


# --- the report ----------------------------------------------------------------------------------

def build_report(run_dir: str | os.PathLike, *, training_data: str | os.PathLike | None = None,
                 evaluation: Evaluation | None = None, score_model: ScoreModel | None = None,
                 name: str | None = None, source_data: str | None = None,
                 registration: dict[str, Any] | None = None) -> str:
    """The report's HTML text. ``registration``: the register step's record (the version and the gate's
    decision), shown after the summary. ``training_data``: where the data the sweep trained on is now, when not
    where job.yaml says; ``evaluation``: the best model's evaluation already written (not scored again);
    else ``score_model`` scores the best model on its validation split for the report (the pipeline's
    ``evaluate_model``, which needs the serving engine above this package);
    ``name`` and ``source_data``: the job's name and the training data as the user gave it, when the
    run folder's job.yaml does not hold them (a pipeline's sweep step sees the ingested data only)."""
    run = load_run(run_dir)
    job = dict(run.job)
    if training_data is not None:
        job["training_data"] = str(training_data)
    if name:
        job["name"] = name
    if source_data:
        job[SOURCE_KEY] = str(source_data)
    run = dataclasses.replace(run, job=job)
    sections = [_summary(run), *([_registry_section(registration)] if registration else []), _data_section(run),
                _leaderboard(run), _curves(run), _hyperparameters(run),
                *_evaluation_and_predictions(run, evaluation, score_model)]
    name = run.job.get("name") or run.run_dir.name
    best = run.best
    subtitle = (f"{run.task.value}, {len(run.trials)} trial(s); best {run.primary} "
                f"{H.fmt_number(best.best_value) if best else 'none'}; written {time.strftime('%Y-%m-%d %H:%M')}")
    return H.page(f"AutoML run report: {name}", subtitle, sections, script=True)


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 training_data: str | os.PathLike | None = None, evaluation: Evaluation | None = None,
                 score_model: ScoreModel | None = None, name: str | None = None,
                 source_data: str | None = None, registration: dict[str, Any] | None = None) -> Path:
    """Write the run's ``report.html`` (default: into the run folder) and return its path; the keywords
    are :func:`build_report`'s."""
    t0 = time.monotonic()
    text = build_report(run_dir, training_data=training_data, evaluation=evaluation, score_model=score_model,
                        name=name, source_data=source_data, registration=registration)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    log.info("report written to %s (%.0f KiB, %.1f s)", path, len(text) / 1024, time.monotonic() - t0)
    return path
