"""The demo: real handwritten-digit images shipped inside scikit-learn, written out as PNG files
and a JSONL file, and a small job over two models. Needs no network, no GPU and no cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from sklearn.datasets import load_digits

DEMO_IMAGE_SIZE = 32
DEMO_IMAGES = 1797  # all of scikit-learn's digits


def write_digits_dataset(out_dir: str | Path, count: int = DEMO_IMAGES, size: int = DEMO_IMAGE_SIZE) -> Path:
    """Write ``count`` digit images (8x8 scans upscaled to ``size``) as PNGs plus ``digits.jsonl``."""
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    lines = []
    for i in range(min(count, len(digits.images))):
        pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
        name = f"images/digit_{i:04d}.png"
        image.save(out_dir / name)
        lines.append(json.dumps({"image_url": name, "image_details": {"format": "png", "width": size, "height": size},
                                 "label": str(int(digits.target[i]))}))
    jsonl = out_dir / "digits.jsonl"
    tmp = jsonl.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(jsonl)
    return jsonl


def demo_job(training_data: str) -> dict:
    return {
        "task": "image_classification",
        "name": "demo",
        "training_data": training_data,
        "limits": {"max_trials": 4, "max_concurrent_trials": 1, "timeout_minutes": 30},
        "sweep": {"sampling_algorithm": "grid"},
        "search_space": [{
            "model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
            "learning_rate": {"type": "choice", "values": [0.02, 0.005]},
        }],
        "training_parameters": {
            "pretrained": False,
            "number_of_epochs": 6,
            "training_batch_size": 32,
            "validation_batch_size": 64,
            "train_crop_size": DEMO_IMAGE_SIZE,
            "valid_resize_size": DEMO_IMAGE_SIZE,
            "valid_crop_size": DEMO_IMAGE_SIZE,
            "warmup_cosine_lr_warmup_epochs": 1,
            "early_stopping": False,
        },
    }


def prepare_demo(out_dir: str | Path) -> Path:
    """Write the dataset and ``job.yaml`` into ``out_dir``; returns the job file."""
    out_dir = Path(out_dir)
    write_digits_dataset(out_dir / "data")
    job_path = out_dir / "job.yaml"
    job_path.write_text(yaml.safe_dump(demo_job("data/digits.jsonl"), sort_keys=False))
    return job_path
