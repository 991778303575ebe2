"""A real headless browser for the page tests: Debian's chromium driven by selenium.

``make test`` installs chromium and chromium-driver first (the ``browser`` target). Run on its
own, the ``browser`` fixture installs them the same way when they are missing and apt-get is
there; the tests skip, saying why, only when that is impossible.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags that work on machines with no display, no GPU, no user namespace sandbox and no network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1")


def install_chromium() -> str | None:
    """Install chromium and its driver with apt when missing; None on success, else why not."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    apt = shutil.which("apt-get")
    if apt is None:
        return "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is not installed and installing it with apt-get needs root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium", "chromium-driver"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return "apt-get installed chromium but /usr/bin/chromium or /usr/bin/chromedriver is missing"
    return None


@dataclass
class Browser:
    """One chromium window; ``errors()`` returns the console errors since the last call."""

    driver: object
    profile: str

    def open(self, url: str) -> None:
        self.driver.get(url)
        # Let scripts, images and layout settle: the page is loaded when the document says so.
        for _ in range(100):
            if self.driver.execute_script("return document.readyState") == "complete":
                break

    def errors(self) -> list[str]:
        """SEVERE console entries: console.error calls, uncaught exceptions, failed loads."""
        return [e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    def resize(self, width: int, height: int) -> None:
        self.driver.set_window_size(width, height)

    def run(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def screenshot(self, path: Path, *, full_page: bool = True) -> np.ndarray:
        """Save a PNG of the page (the whole scrollable page by default); returns its pixels (H, W, 3)."""
        from PIL import Image

        if full_page:
            m = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
            size = m.get("cssContentSize") or m["contentSize"]
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
            Path(path).write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


def start_browser(width: int = 1366, height: int = 900) -> Browser:
    """A fresh headless chromium (fresh profile) logging the console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={width},{height}")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    return Browser(driver, profile)


@pytest.fixture(scope="module")
def browser():
    why = install_chromium()
    if why is not None:
        pytest.skip(f"no headless browser: {why}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    b = start_browser()
    yield b
    b.close()


def not_blank(pixels: np.ndarray) -> bool:
    """A screenshot with content: many colours and real contrast, not one flat colour."""
    flat = pixels.reshape(-1, 3)
    step = max(1, len(flat) // 200_000)
    distinct = len(np.unique(flat[::step], axis=0))
    return distinct > 50 and float(pixels.std()) > 10


def kfp_viewer_page(html_text: str, folder: Path, width: int = 1100) -> Path:
    """A page that shows ``html_text`` the way the Kubeflow Pipelines UI's HTML viewer does: an iframe
    whose ``srcdoc`` is set from script, ``sandbox="allow-scripts"`` (no same origin), at least 600 px high."""
    import json

    host = folder / "kfp_viewer.html"
    host.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'></head><body style='margin:0'>"
        f"<iframe id='viewer' src='javascript:void(0);' sandbox='allow-scripts' "
        f"style='border:1px solid #ccc;box-sizing:border-box;width:{width}px;min-height:600px;height:900px'></iframe>"
        # "</" escaped: the page's own </script> must not end this script
        f"<script>document.getElementById('viewer').srcdoc = {json.dumps(html_text).replace('</', '<' + chr(92) + '/')};"
        "</script></body></html>"
    )
    return host


# --- synthetic pictures with a known box ---------------------------------------------------------

BACKGROUND = (20, 20, 30)
OBJECT = (255, 255, 255)


def make_box_dataset(root: Path, *, n: int = 4, size: tuple[int, int] = (96, 72),
                     box: tuple[int, int, int, int] = (22, 14, 61, 47), segmentation: bool = False,
                     name: str = "boxes.jsonl") -> Path:
    """PNG images of one white rectangle (``box``: pixel edges x0, y0, x1, y1, x1/y1 exclusive) on a
    dark background, labelled ``square`` with that box (and its outline as the polygon); returns the JSONL."""
    import json

    from PIL import Image

    w, h = size
    x0, y0, x1, y1 = box
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        pixels = np.zeros((h, w, 3), dtype=np.uint8)
        pixels[:] = BACKGROUND
        pixels[y0:y1, x0:x1] = OBJECT
        rel = f"images/box_{i:02d}.png"
        Image.fromarray(pixels).save(root / rel)
        obj = {"label": "square", "topX": x0 / w, "topY": y0 / h, "bottomX": x1 / w, "bottomY": y1 / h}
        if segmentation:
            obj["polygon"] = [[x0 / w, y0 / h, x1 / w, y0 / h, x1 / w, y1 / h, x0 / w, y1 / h]]
        lines.append({"image_url": rel, "label": [obj]})
    path = root / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# --- a run folder with every file a finished run leaves, without training ------------------------

def _curve_lines(values: list[float], losses: list[float], primary: str) -> str:
    import json

    return "".join(json.dumps({"timestamp": f"2026-01-01T10:0{i}:00Z", "epoch": str(i + 1), primary: str(v),
                               "loss": str(lo)}) + "\n" for i, (v, lo) in enumerate(zip(values, losses)))


def make_run_folder(root: Path, training_data: Path, *, with_model: bool = True) -> Path:
    """A classification run folder as ``automl-vision run`` leaves it (job.yaml, leaderboard.json,
    sweep.json, trials/*, best_model/), with made-up learning curves: one trial completed, one
    stopped by the bandit rule, one stopped by its own early stopping, one failed. ``best_model`` is
    a real model package (an untrained resnet18 at 32 px), so it can be scored."""
    import json

    from automl_vision.spec import hyperparameters as hps
    from automl_vision.spec.job import parse_job
    from automl_vision.spec.tasks import ImageTask

    task = ImageTask.IMAGE_CLASSIFICATION
    fixed = {"pretrained": False, "number_of_epochs": 4, "train_crop_size": 32, "valid_resize_size": 32,
             "valid_crop_size": 32, "early_stopping_patience": 2, "early_stopping_delay": 1}
    job = parse_job({
        "task": task.value, "name": "synthetic", "training_data": str(training_data),
        "limits": {"max_trials": 4},
        "sweep": {"sampling_algorithm": "random",
                  "early_termination": {"type": "bandit", "evaluation_interval": 1, "slack_factor": 0.2,
                                        "delay_evaluation": 1}},
        "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
                          "learning_rate": {"type": "loguniform", "min_value": -9, "max_value": -3}}],
        "training_parameters": fixed,
    })
    run = root / "run"
    (run / "trials").mkdir(parents=True, exist_ok=True)
    (run / "job.yaml").write_text(job.to_yaml())
    trials = [
        # id, status, params, curve, losses, best epoch, reason
        ("trial-0000", "completed", {"model_name": "resnet18", "learning_rate": 0.01},
         [0.5, 0.7, 0.8, 0.83], [1.2, 0.8, 0.6, 0.5], 4, "completed its 4 epoch(s)"),
        ("trial-0001", "terminated", {"model_name": "mobilenetv2", "learning_rate": 0.0005},
         [0.4, 0.5], [1.5, 1.3], 2,
         "terminated by bandit at interval 2 (epoch 2): bandit: best 0.5 < 0.5833 = 0.7 / (1 + 0.2) at interval 2"),
        ("trial-0002", "early_stopped", {"model_name": "resnet18", "learning_rate": 0.0002},
         [0.6, 0.62, 0.61, 0.6], [1.0, 0.95, 0.97, 0.99], 2, "stopped by its own early stopping"),
        ("trial-0003", "failed", {"model_name": "mobilenetv2", "learning_rate": 0.04}, [], [], None,
         "error: training diverged: training loss nan at epoch 1, global step 3"),
    ]
    rows, sweep_trials, history = [], [], {}
    ranked = sorted([t for t in trials if t[3]], key=lambda t: -max(t[3]))
    for tid, status, params, curve, losses, best_epoch, reason in trials:
        tdir = run / "trials" / tid
        tdir.mkdir()
        hp = hps.resolve(task, {**fixed, **params})
        (tdir / "config.json").write_text(json.dumps({"task": task.value, "training_data": str(training_data),
                                                      "validation_data": None, "hyperparameters": hp,
                                                      "output_dir": str(tdir)}))
        best = max(curve) if curve else None
        (tdir / "result.json").write_text(json.dumps({"status": status, "primary_metric": "accuracy",
                                                      "best_value": best, "best_epoch": best_epoch,
                                                      "epochs_completed": len(curve), "duration_s": 12.5,
                                                      "message": reason if status == "failed" else ""}))
        if curve:
            (tdir / "metrics.jsonl").write_text(_curve_lines(curve, losses, "accuracy"))
        rank = next((i + 1 for i, t in enumerate(ranked) if t[0] == tid), None)
        rows.append({"rank": rank, "trial_id": tid, "status": status, "model_name": params["model_name"],
                     "best_value": best, "best_epoch": best_epoch, "epochs_completed": len(curve),
                     "duration_s": 12.5, "parameters": params, "reason": reason})
        sweep_trials.append({"trial_id": tid, "status": status, "reason": reason, "parameters": params,
                             "history": [{"epoch": i + 1, "accuracy": v, "loss": lo}
                                         for i, (v, lo) in enumerate(zip(curve, losses))]})
        history[tid] = curve
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0))
    (run / "leaderboard.json").write_text(json.dumps({"primary_metric": "accuracy", "goal": "maximize",
                                                      "trials": rows, "history": history}))
    (run / "sweep.json").write_text(json.dumps({"status": "finished", "primary_metric": "accuracy",
                                                "goal": "maximize", "trials": sweep_trials}))
    if with_model:
        _write_package(run / "best_model", training_data, {**fixed, "model_name": "resnet18", "learning_rate": 0.01})
    return run


def _write_package(folder: Path, training_data: Path, given: dict) -> None:
    import json

    import torch
    from safetensors.torch import save_file

    from automl_vision.models.registry import build_model
    from automl_vision.spec import hyperparameters as hps
    from automl_vision.spec.tasks import ImageTask

    task = ImageTask.IMAGE_CLASSIFICATION
    classes = sorted({json.loads(ln)["label"] for ln in training_data.read_text().splitlines() if ln.strip()})
    torch.manual_seed(0)
    model = build_model(given["model_name"], task, len(classes), pretrained=False)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    hp = hps.resolve(task, given)
    (folder / "config.json").write_text(json.dumps({"task": task.value, "model_name": given["model_name"],
                                                    "hyperparameters": hp, "num_classes": len(classes), "epoch": 4}))
    (folder / "labels.json").write_text(json.dumps(classes))
    (folder / "metrics.json").write_text(json.dumps({"epoch": 4, "accuracy": 0.83, "loss": 0.5,
                                                     "f1_score_macro": 0.81}))
