"""The run report: every section from a run folder, self-contained, honest about what is missing."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import pytest
from PIL import Image

from automl_vision.errors import ConfigError
from automl_vision.pipeline.runner import write_run_report
from automl_vision.report import write_report
from automl_vision.report.html import Cell, fmt_number, table
from automl_vision.training.runfolder import load_run
from browser_support import make_run_folder

SECTIONS = ("summary", "data", "leaderboard", "curves", "hyperparameters", "evaluation", "predictions", "explanations")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from conftest import make_classification_dataset

    root = tmp_path_factory.mktemp("report")
    data = make_classification_dataset(root / "data", n_per_class=6, classes=("red", "green", "blue"), size=32)
    run = make_run_folder(root, data)
    write_run_report(run)
    return run


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r'<section id="([\w-]+)" data-section="[\w-]+">', page)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_report_has_every_section_and_nothing_from_outside(run_folder):
    page = (run_folder / "report.html").read_text()
    sections = _sections(page)
    assert tuple(sections) == SECTIONS
    # self-contained: no stylesheet, script or image from anywhere else
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<script src" not in page and "@import" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 7  # histogram, preview, curves, parallel coordinates, scatter, confusion, ROC/PR, predictions
    for b64 in images:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG" and im.width >= 100


def test_leaderboard_ranks_and_explains_each_trial(run_folder):
    board = _sections((run_folder / "report.html").read_text())["leaderboard"]
    rows = re.findall(r"<tr(?: class=\"best\")?><td class=\"num\"[^>]*>([^<]*)</td><td class=\"nowrap\">(trial-\d+)", board)
    assert rows == [("1", "trial-0000"), ("2", "trial-0002"), ("3", "trial-0001"), ("-", "trial-0003")]
    assert '<tr class="best"><td class="num" data-v="1">1</td><td class="nowrap">trial-0000' in board
    assert 'class="sortable"' in board and "learning_rate" in board
    assert "error: training diverged: training loss nan" in board


def test_curves_mark_early_ends_with_their_rule(run_folder):
    curves = _sections((run_folder / "report.html").read_text())["curves"]
    assert "Trials that ended early" in curves
    assert "terminated by bandit at interval 2 (epoch 2): bandit: best 0.5 &lt; 0.5833 = 0.7 / (1 + 0.2)" in curves
    assert "early stopping: accuracy did not improve for 2 evaluations (tracked after the first 1); best 0.62 at epoch 2" in curves


def test_evaluation_scores_the_best_model_on_its_own_validation_split(run_folder):
    page = (run_folder / "report.html").read_text()
    sections = _sections(page)
    evaluation = run_folder / "evaluation"
    assert (evaluation / "confusion_matrix.png").is_file() and (evaluation / "predictions.jsonl").is_file()
    scored = [json.loads(ln) for ln in (evaluation / "predictions.jsonl").read_text().splitlines()]
    validation = (evaluation / "split" / "validation.jsonl").read_text().splitlines()
    assert len(scored) == len(validation) == 3  # split_ratio 0.2 of 6 images per class: 1 per class
    assert "on the 3 validation images of trial-0000" in sections["evaluation"]
    assert "Confusion matrix" in sections["evaluation"] and "Per class" in sections["evaluation"]
    assert "accuracy: <b>0.83</b>" in sections["evaluation"]  # what the trial recorded, shown as such
    assert re.search(r"\d of the \d validation images the model gets wrong", sections["predictions"])
    # every validation image explained (fewer than 4), each picture captioned right or wrong as scored
    index = json.loads((evaluation / "explanations" / "explanations.json").read_text())
    truth = {json.loads(ln)["image_url"]: json.loads(ln)["label"] for ln in validation}
    wrong = {r["image_url"] for r in scored if r["labels"][r["probs"].index(max(r["probs"]))] != truth[r["image_url"]]}
    assert sorted(e["image_url"] for e in index["explanations"]) == sorted(truth)
    assert {e["image_url"] for e in index["explanations"] if not e["correct"]} == wrong
    shown = sections["explanations"]
    assert shown.count('alt="XRAI explanation"') == 3 and shown.count("<b>wrong</b>") == len(wrong)
    assert "confidence_score_threshold_multilabel" not in shown  # a multi-class model's report


def test_a_given_evaluation_is_shown_not_scored_again(run_folder, tmp_path):
    from automl_vision.report.rescore import Evaluation

    # the evaluate step's files as a cluster leaves them: its images remote URIs, which this machine cannot open
    given, scored = tmp_path / "evaluation", tmp_path / "validation.jsonl"
    given.mkdir()
    images = str(run_folder.parent / "data" / "images")
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.png", "roc_pr_curves.png", "samples.png",
                 "predictions.jsonl"):
        shutil.copyfile(run_folder / "evaluation" / name, given / name)
    for source, target in ((run_folder / "evaluation" / "split" / "validation.jsonl", scored),
                           (run_folder / "evaluation" / "predictions.jsonl", given / "predictions.jsonl")):
        target.write_text(source.read_text().replace(images, "s3://bucket/images"))
    sections = _sections(write_report(run_folder, tmp_path / "report.html",
                                      evaluation=Evaluation(given, scored, "the evaluate step")).read_text())
    assert "explanations" not in sections  # that evaluation wrote none
    assert f"Scored by the evaluate step on the 3 validation images of {scored}; all files are in {given}." \
        in sections["evaluation"]
    assert "Confusion matrix" in sections["evaluation"] and "Per class" in sections["evaluation"]
    assert "the true labels (left) beside the model's predictions (right)" in sections["predictions"]
    assert sections["predictions"].count('src="data:image/png;base64,') == 1

    (given / "metrics.json").unlink()
    sections = _sections(write_report(run_folder, tmp_path / "report.html",
                                      evaluation=Evaluation(given, scored)).read_text())
    assert f"Cannot score the best model on its validation images: {given}: no metrics.json" in sections["evaluation"]


def test_hyperparameters_against_the_metric(run_folder):
    run = load_run(run_folder)
    assert [t.trial_id for t in run.trials if t.rank] == ["trial-0000", "trial-0002", "trial-0001"]
    section = _sections((run_folder / "report.html").read_text())["hyperparameters"]
    assert section.count("<img") == 2 and "parallel coordinates" in section


def test_a_run_without_any_model_still_gets_a_report(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=4)
    run = make_run_folder(tmp_path, data, with_model=False)
    board = json.loads((run / "leaderboard.json").read_text())
    for row in board["trials"]:
        row.update(rank=None, status="failed", best_value=None)
    (run / "leaderboard.json").write_text(json.dumps(board))
    sections = _sections(write_run_report(run).read_text())
    assert tuple(sections) == SECTIONS[:-1]  # no model, nothing explained
    assert "No trial produced a model, so there is nothing to evaluate." in sections["evaluation"]
    assert "No trial produced a metric to compare." in sections["hyperparameters"]


def test_missing_data_is_said_not_hidden(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", n_per_class=4)
    run = make_run_folder(tmp_path, data)
    shutil.rmtree(tmp_path / "data")
    sections = _sections(write_run_report(run).read_text())
    assert "cannot read" in sections["data"] and "file not found" in sections["data"]
    assert "Cannot score the best model on its validation images" in sections["evaluation"]


@pytest.mark.parametrize("setup, message", [
    (lambda run: (run / "job.yaml").unlink(), "no job.yaml; is this a run folder"),
    (lambda run: (run / "job.yaml").write_text("task: image_sorting\n"), "task='image_sorting' is not a task"),
    (lambda run: (run / "leaderboard.json").write_text("{"), "leaderboard.json: not valid JSON"),
])
def test_broken_run_folders_name_the_problem(tmp_path, make_dataset, setup, message):
    data = make_dataset(tmp_path / "data", n_per_class=2)
    run = make_run_folder(tmp_path, data, with_model=False)
    setup(run)
    with pytest.raises(ConfigError, match=re.escape(message)):
        write_run_report(run)


def test_table_escapes_text_and_sorts_by_value():
    html = table(["name", ("value", True)], [[Cell("<b>x</b>"), Cell("0.5", 0.5, True)]], sortable=True)
    assert "&lt;b&gt;x&lt;/b&gt;" in html and 'data-v="0.5"' in html and 'class="sortable"' in html
    assert [fmt_number(v) for v in (None, True, 0.123456, 3, float("nan"), 1e-5)] == \
        ["-", "1", "0.1235", "3", "NaN", "1e-05"]


def test_data_summary_reads_jsonl_and_ingested_datasets_alike(tmp_path):
    from automl_vision.data.manifest import ingest
    from automl_vision.report.data_summary import summarize_data
    from automl_vision.spec.tasks import ImageTask
    from browser_support import make_box_dataset

    data = make_box_dataset(tmp_path / "d", n=5)
    ingest(data, ImageTask.IMAGE_OBJECT_DETECTION, tmp_path / "ingested")
    from_jsonl = summarize_data(data, ImageTask.IMAGE_OBJECT_DETECTION)
    from_manifest = summarize_data(tmp_path / "ingested", ImageTask.IMAGE_OBJECT_DETECTION)
    for s in (from_jsonl, from_manifest):
        assert (s.images, s.objects, dict(s.class_counts), sorted(set(s.sizes))) == (5, 5, {"square": 5}, [(96, 72)])


def test_summary_states_the_best_models_licences(run_folder):
    """The licences of the best model's code and of its starting weights (the model catalogue), as the
    package README states them."""
    from automl_vision.models.catalogue import licence_text

    run = load_run(run_folder)
    summary = _sections((run_folder / "report.html").read_text())["summary"]
    assert "best model&#x27;s licences" in summary or "best model's licences" in summary
    text = licence_text(run.best.model_name, run.best.hyperparameters)
    assert text.startswith("Model code: ") and "licence" in text
    assert html.escape(text) in summary


def test_summary_states_automode_the_budget_and_the_compute():
    from automl_vision.report.run_report import _sweep_facts

    facts = dict(_sweep_facts({
        "automode": {"summary": "AutoMode: 4 search-space entries over mobilenetv2, resnet18; sizes 64, 128"},
        "warm_start": {"runs_read": 2, "runs_used": 1, "seeds": [{"parameters": {}}]},
        "budget": {"budget": 0.05, "unit": "CPU-hours", "used": 0.04871},
        "compute": {"trial_epochs": 30, "trial_epochs_without_early_termination": 96, "saved_share": 0.6875,
                    "trial_seconds": 175.3, "device_hours": 0.04871},
        "stopped_because": "the budget of 0.05 CPU-hours is spent"}))
    assert facts["search space"].startswith("AutoMode: 4 search-space entries")
    assert facts["warm start"] == "the first 1 trial(s) took the best settings of 1 similar earlier run(s) (2 read)"
    assert facts["budget"] == "0.04871 of 0.05 CPU-hours used"
    assert facts["compute used"] == ("30 trial-epoch(s), 175 trial-seconds, 0.04871 device-hour(s); 96 trial-epoch(s) "
                                     "without early termination (69% saved)")
    assert facts["sweep stopped"] == "the budget of 0.05 CPU-hours is spent"
    assert _sweep_facts({}) == []  # a single trial's run folder: nothing to add
