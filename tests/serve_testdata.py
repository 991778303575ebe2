"""Tiny model packages and a real model server for the serving tests.

Packages are freshly built random-init models saved through the trainers' own save functions
(the files a trial writes), then turned into full packages by ``package_model``. The server is
``automl-vision serve`` started as a subprocess on a free port of 127.0.0.1 and stopped after.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from automl_vision.spec import hyperparameters as hps
from automl_vision.spec.tasks import ImageTask, YOLO_MODELS

SMALL_CLASSIFICATION = {"train_crop_size": 32, "valid_resize_size": 32, "valid_crop_size": 32}
SMALL_DETECTION = {"min_size": 64, "max_size": 96}


def save_random_trial(out: Path, task: ImageTask, model_name: str, classes=("blue", "red"), **given) -> Path:
    """A random-init model saved as a trial saves it; returns the trial's ``outputs/`` folder."""
    import torch

    from automl_vision.models.registry import build_model
    from automl_vision.training.loop import save_model
    from automl_vision.training.trial import TrialSettings

    torch.manual_seed(0)
    defaults = SMALL_CLASSIFICATION if task.is_classification else (
        {"img_size": 64, "model_size": "small"} if model_name in YOLO_MODELS else SMALL_DETECTION)
    hp = hps.resolve(task, {"model_name": model_name, "pretrained": False, **defaults, **given})
    settings = TrialSettings(task=task, training_data="train.jsonl", validation_data=None, hyperparameters=hp,
                             output_dir=str(out))
    outputs = out / "outputs"
    classes = list(classes)
    if task.is_classification:
        model = build_model(model_name, task, len(classes), pretrained=False, image_size=hp["train_crop_size"])
        save_model(model.eval(), outputs, settings, classes, {task.primary_metric: 0.5}, 1)
        return outputs
    from automl_vision.evaluation.detection_metrics import DetectionMetrics

    if model_name in YOLO_MODELS:
        model = build_model(model_name, task, len(classes), pretrained=False, model_size=hp["model_size"])
    else:
        from automl_vision.models.detection import DetectorSettings

        infer = DetectorSettings.from_hyperparameters(hp)
        model = build_model(model_name, task, len(classes), pretrained=False, settings=infer)
    save_model(model.eval(), outputs, settings, classes, DetectionMetrics({"mean_average_precision": 0.0}).to_json(), 1)
    return outputs


def make_package(root: Path, task: ImageTask, model_name: str, *, onnx: bool = False, **given) -> Path:
    """A full model package (``package_model``) of a random-init model."""
    from automl_vision.serving.export import package_model

    outputs = save_random_trial(root / "trial", task, model_name, **given)
    return package_model(outputs, root / "package", onnx=onnx).path


def png_bytes(width: int = 48, height: int = 40, seed: int = 0, colour=(220, 40, 40)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour, dtype=np.float32) + rng.normal(0, 25, (height, width, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(width, height, seed))).save(buf, format="JPEG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def original_request(*images: bytes) -> dict:
    return {"input_data": {"columns": ["image"], "data": [b64(x) for x in images]}}


def sample_client_body(*images: bytes) -> str:
    """A request body built as the original product's published scoring samples build it (its
    azureml-examples prepare_data.py scripts): MIME base64 from ``base64.encodebytes`` (a line break
    every 76 characters), an ``index`` and ``json.dump``."""
    import json

    body = {"input_data": {"columns": ["image"], "index": list(range(len(images))),
                           "data": [base64.encodebytes(x).decode("utf-8") for x in images]}}
    return json.dumps(body)


def post_like_sample_client(url: str, *images: bytes, path: str = "/score"):
    """POST the body of :func:`sample_client_body` as the samples' ``requests.post(scoring_uri,
    data=..., headers={"Content-Type": "application/json"})`` does."""
    import httpx

    return httpx.post(url + path, content=sample_client_body(*images), headers={"Content-Type": "application/json"},
                      timeout=120)


def explain_request(*images: bytes, **xai_parameters) -> dict:
    """The original product's explanation request, built as its published sample builds it: each row is
    ``json.dumps`` of ``{"image_base64": base64.encodebytes(...), "model_explainability": True,
    "xai_parameters": {...}}``."""
    rows = [json.dumps({"image_base64": base64.encodebytes(data).decode("utf-8"), "model_explainability": True,
                        "xai_parameters": dict(xai_parameters)}) for data in images]
    return {"input_data": {"columns": ["image"], "data": rows}}


def png_size(b64_png: str) -> tuple[int, int]:
    """The size of a base64 PNG (it must decode as one)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as image:
        assert image.format == "PNG"
        return image.size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def running_server(model_dir: Path, log_dir: Path, *, env: dict | None = None, args: tuple = (),
                   timeout: float = 180.0):
    """``automl-vision serve`` on a free port; yields a :class:`Server` once the model answers ready."""
    import httpx

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"server-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "automl_vision", "serve", "--model", str(model_dir),
                                    "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models/model", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Server(url, process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
