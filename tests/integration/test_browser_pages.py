"""The preview and the run report in a real headless browser (Debian's chromium through selenium):
each page loads with no console error, its sections are there, a screenshot is not blank, and the
preview's drawn box lands on the right screen pixels. The report is also opened the way the
Kubeflow Pipelines UI shows HTML (a sandboxed iframe fed through srcdoc)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from automl_vision.pipeline.runner import write_run_report
from automl_vision.report import write_preview
from automl_vision.report.draw import colour
from browser_support import browser, kfp_viewer_page, make_box_dataset, make_run_folder, not_blank  # noqa: F401
from conftest import make_classification_dataset

REPORT_SECTIONS = ["summary", "data", "leaderboard", "curves", "hyperparameters", "evaluation", "predictions",
                   "explanations"]
BOX = (22, 14, 61, 47)


def _sections(b) -> list[str]:
    return b.run("return Array.from(document.querySelectorAll('section[data-section]')).map(s => s.id)")


def _open(b, path: Path) -> None:
    b.errors()  # forget what earlier pages logged
    b.open(path.resolve().as_uri())


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-report")
    data = make_classification_dataset(root / "data", n_per_class=6, classes=("red", "green", "blue"), size=32)
    return write_run_report(make_run_folder(root, data))


def test_preview_page_draws_the_box_on_the_right_screen_pixels(browser, tmp_path):
    data = make_box_dataset(tmp_path / "d", n=2)
    result = write_preview(data, "image_object_detection", tmp_path / "preview", count=8, draws=4,
                           model_name="fasterrcnn_resnet18_fpn")
    browser.resize(1366, 900)
    _open(browser, result.html)
    assert browser.errors() == []
    assert _sections(browser) == ["samples", "about"]
    shot = browser.screenshot(tmp_path / "preview.png")
    assert not_blank(shot)
    rect = browser.run("const i = document.getElementById('preview-grid'); const r = i.getBoundingClientRect();"
                       "return [r.left + i.clientLeft + window.scrollX, r.top + i.clientTop + window.scrollY,"
                       " i.naturalWidth, i.clientWidth,"
                       " i.complete]")
    left, top, natural, shown, complete = rect
    assert complete and natural == shown, "the grid is shown at its own size on a laptop-wide window"
    with Image.open(result.png) as im:
        png = np.asarray(im.convert("RGB")).astype(int)
    x, y = round(left), round(top)
    on_screen = shot[y:y + png.shape[0], x:x + png.shape[1]].astype(int)
    assert on_screen.shape == png.shape
    assert np.abs(on_screen - png).max() <= 3  # the browser shows the grid pixel for pixel
    # the original tile: the file's box at the tile's scale, on screen
    tile = json.loads(result.json.read_text())["rows"][0]["tiles"][0]
    s = tile["width"] / 96
    bx0, by0 = x + tile["x"] + round(BOX[0] * s), y + tile["y"] + round(BOX[1] * s)
    bx1, by1 = x + tile["x"] + round(BOX[2] * s) - 1, y + tile["y"] + round(BOX[3] * s) - 1
    mid_y, mid_x = (by0 + by1) // 2, (bx0 + bx1) // 2
    blue = np.array(colour(0))
    for py, px in ((mid_y, bx0), (mid_y, bx1), (by1, mid_x), (by0, bx1)):
        assert np.abs(shot[py, px].astype(int) - blue).max() <= 3, (py, px, shot[py, px])
    assert np.abs(shot[mid_y, bx0 - 1].astype(int) - blue).max() > 30  # just outside: not the box
    assert (shot[mid_y, bx0 + 2] > 240).all()  # just inside: the white object


@pytest.mark.parametrize("task, model", [("image_classification", "resnet18"),
                                         ("image_classification_multilabel", "mobilenetv2"),
                                         ("image_instance_segmentation", "maskrcnn_resnet18_fpn")])
def test_preview_pages_of_the_other_tasks_load_cleanly(browser, tmp_path, make_dataset, task, model):
    if task.startswith("image_classification"):
        data = make_dataset(tmp_path / "d", n_per_class=3, multilabel=task.endswith("multilabel"))
    else:
        data = make_box_dataset(tmp_path / "d", n=2, segmentation=True)
    result = write_preview(data, task, tmp_path / "preview", count=8, model_name=model)
    _open(browser, result.html)
    assert browser.errors() == []
    assert _sections(browser) == ["samples", "about"]
    assert browser.run("return document.getElementById('preview-grid').naturalWidth") > 500
    assert not_blank(browser.screenshot(tmp_path / "preview.png"))


def test_report_page_loads_sorts_and_fits_a_laptop_screen(browser, report, tmp_path):
    browser.resize(1280, 800)
    _open(browser, report)
    assert browser.errors() == []
    assert _sections(browser) == REPORT_SECTIONS
    broken = browser.run("return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    # nothing wider than the window: wide tables scroll inside their own box
    assert browser.run("return document.documentElement.scrollWidth <= window.innerWidth")
    shot = browser.screenshot(tmp_path / "report.png")
    assert not_blank(shot) and shot.shape[0] > 3000

    def order():
        return browser.run("return Array.from(document.querySelectorAll('#leaderboard-table tbody tr'))"
                           ".map(r => r.cells[1].textContent)")

    assert order() == ["trial-0000", "trial-0002", "trial-0001", "trial-0003"]
    header = browser.driver.find_element("xpath", "//table[@id='leaderboard-table']//th[text()='accuracy']")
    header.click()
    assert order() == ["trial-0001", "trial-0002", "trial-0000", "trial-0003"]  # ascending, no value last
    header.click()
    assert order() == ["trial-0000", "trial-0002", "trial-0001", "trial-0003"]
    assert browser.errors() == []


def test_report_in_the_pipelines_ui_html_viewer(browser, report, tmp_path):
    host = kfp_viewer_page(report.read_text(), tmp_path, width=1100)
    browser.resize(1200, 1000)
    _open(browser, host)
    frame = browser.driver.find_element("id", "viewer")
    browser.driver.switch_to.frame(frame)
    try:
        for _ in range(50):
            if browser.run("return document.readyState") == "complete" and _sections(browser):
                break
        assert _sections(browser) == REPORT_SECTIONS
        header = browser.driver.find_element("xpath", "//table[@id='leaderboard-table']//th[text()='trial']")
        header.click()
        header.click()  # descending: the script runs inside the sandbox
        rows = browser.run("return Array.from(document.querySelectorAll('#leaderboard-table tbody tr'))"
                           ".map(r => r.cells[1].textContent)")
        assert rows == ["trial-0003", "trial-0002", "trial-0001", "trial-0000"]
        assert browser.run("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.driver.switch_to.default_content()
    assert browser.errors() == []
    assert not_blank(browser.screenshot(tmp_path / "viewer.png", full_page=False))


@pytest.mark.slow
def test_a_real_detection_run_ends_with_its_report(browser, tmp_path, cli_main):
    # classification reports are covered above on a run folder with a real model package; here a real
    # run, of the other family of tasks, from the command line to the page
    data = make_box_dataset(tmp_path / "data", n=8)
    job = {"task": "image_object_detection", "name": "browser", "training_data": str(data),
           "limits": {"max_trials": 1},
           "search_space": [{"model_name": {"type": "choice", "values": ["fasterrcnn_resnet18_fpn"]}}],
           "training_parameters": {"pretrained": False, "number_of_epochs": 1, "min_size": 96, "max_size": 128}}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    run = tmp_path / "run"
    # the library engine: the same run folder and the same report call as the pipeline, without kfp's steps
    # (no explanations: whether a one-epoch detector finds a box to explain is not this test's question)
    p = cli_main("run", str(job_file), "--output-dir", str(run), "--engine", "library", "--explain-images", "0")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert re.search(r"^report: .*report\.html$", p.stdout, re.M), p.stdout
    assert (run / "evaluation" / "pr_curves.png").is_file() and (run / "evaluation" / "samples.png").is_file()
    _open(browser, run / "report.html")
    assert browser.errors() == []
    assert _sections(browser) == REPORT_SECTIONS[:-1]
    text = browser.run("return document.body.innerText")
    assert "fasterrcnn_resnet18_fpn" in text and "Objects per class in the training data" in text
    assert "Precision-recall curve of each label" in text and "true objects (left)" in text
    assert not_blank(browser.screenshot(tmp_path / "report.png"))
