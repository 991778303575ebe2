"""AutoMode against three baselines, each given the same compute budget, on held-out test images.

    python benchmarks/automode.py [--datasets digits,fridge,shapes] [--seeds 0,1,2]
                                  [--detection-seeds 0,1] [--budget-classification 0.06]
                                  [--budget-detection 0.08] [--out DIR]

Datasets (each split once into a pool the arms train on, with their own validation split, and a
fixed test set none of them sees):
- ``digits``: scikit-learn's handwritten digits as 32 px PNGs (the demo's data), 500 pool / 400 test;
- ``cells``: blood cells cut out of the BCCD photos (../shared/data/bccd) by their boxes, 48 px, 3
  classes (red and white cells, platelets), 300 a class to train on (fewer where BCCD has fewer) and
  100 a class held out;
- ``fridge``: the fridge_small150 photos (../shared/data), 4 classes, 100 pool / 34 test (not in the
  default list: from scratch on 100 photos every arm stays near chance and the 34 test images make
  the comparison noise);
- ``shapes``: coloured squares and discs on noise, 128 px, built here; detection, 80 pool / 30 test.

Arms, per dataset and seed, each with ``limits.budget`` device-hours, run two at a time, each
pinned to one core of its own (so a budget is hours of one core; one trial at a time):
1. ``automode``: a job with only the data, the task, the budget and ``pretrained: false`` (this
   machine has no network for weights) and the seed;
2. ``random_bandit``: random sampling with bandit termination (slack 0.2, delay 3) over a
   hand-written space of the kind the original's docs show, at the data's natural image size;
3. ``default_trial``: one trial with the product's default settings for resnet18 (detection: the
   task's default model, yolov5) at the natural size, its epochs set so that it fills the budget
   (from a short calibration run that is not counted);
4. ``plain_loop``: a plain PyTorch loop: torchvision's resnet18 (detection: the product's
   fasterrcnn_resnet18_fpn network; yolov5 comes with ultralytics' own trainer, not a plain loop),
   SGD (lr 0.01, momentum 0.9), no augmentation, training until the budget's seconds are spent; the
   epoch with the best validation score is kept (classification; detection keeps the last).

Each arm's model is scored on the test set with the product's metrics (accuracy; mean average
precision at IoU 0.5). Printed: every run, then per dataset the mean and spread over seeds and
AutoMode's difference to each baseline; all of it also in DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fridge_data import FRIDGE  # noqa: E402

from automl_vision.demo import write_digits_dataset  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.spec.tasks import ImageTask  # noqa: E402
from automl_vision.sweep.local import run_sweep  # noqa: E402

CLS, DET = "image_classification", "image_object_detection"


# --- datasets ----------------------------------------------------------------------------------------

def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _split(rows: list[dict], test: int, seed: int = 12345) -> tuple[list[dict], list[dict]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[test:], rows[:test]


def digits(root: Path) -> dict:
    jsonl = write_digits_dataset(root / "digits", count=900)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for r in rows:
        r["image_url"] = str((jsonl.parent / r["image_url"]).resolve())
    pool, test = _split(rows, 400)
    return {"task": CLS, "pool": _write(root / "digits_pool.jsonl", pool), "test": _write(root / "digits_test.jsonl", test),
            "size": 32, "classes": 10}


def fridge(root: Path) -> dict:
    rows = [{"image_url": str(p), "label": p.stem.rsplit("_", 1)[0]} for p in sorted(FRIDGE.glob("*.jpg"))]
    if not rows:
        raise SystemExit(f"no fridge images in {FRIDGE}")
    pool, test = _split(rows, 34)
    return {"task": CLS, "pool": _write(root / "fridge_pool.jsonl", pool), "test": _write(root / "fridge_test.jsonl", test),
            "size": 64, "classes": 4}


BCCD = FRIDGE.parent / "bccd"


def cells(root: Path, per_class: int = 300, test_per_class: int = 100) -> dict:
    """Blood cells cut out of the BCCD photos (../shared/data/bccd, its VOC boxes): red and white cells and
    platelets, each crop a square around its box, saved at 48 px; per_class of each class to train on (all
    the platelets and white cells there are, when fewer) and test_per_class of each held out."""
    from automl_vision.data.convert import voc_to_jsonl

    folder = root / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    lines = voc_to_jsonl(BCCD, folder, image_set="trainval").lines
    by_class: dict[str, list[dict]] = {}
    for line in lines:
        image = None
        for k, o in enumerate(line["label"]):
            if not (o["bottomX"] > o["topX"] and o["bottomY"] > o["topY"]):
                continue  # the two zero-area boxes BCCD holds
            image = image or Image.open(line["image_url"]).convert("RGB")
            w, h = image.size
            cx, cy = (o["topX"] + o["bottomX"]) / 2 * w, (o["topY"] + o["bottomY"]) / 2 * h
            side = max((o["bottomX"] - o["topX"]) * w, (o["bottomY"] - o["topY"]) * h) * 1.1
            box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
            path = folder / f"{Path(line['image_url']).stem}_{k:02d}.png"
            if not path.is_file():
                image.crop(box).resize((48, 48), Image.BILINEAR).save(path)
            by_class.setdefault(o["label"], []).append({"image_url": str(path.resolve()), "label": o["label"]})
    pool, test = [], []
    for label, rows in sorted(by_class.items()):
        random.Random(label).shuffle(rows)
        test += rows[:test_per_class]
        pool += rows[test_per_class:test_per_class + per_class]
    return {"task": CLS, "pool": _write(root / "cells_pool.jsonl", pool), "test": _write(root / "cells_test.jsonl", test),
            "size": 48, "classes": len(by_class)}


def shapes(root: Path, n: int = 110, size: int = 128) -> dict:
    """Red squares and blue discs (1-3 an image, 14-36 px) on noisy grey: a small detection task."""
    rng = np.random.default_rng(7)
    folder = root / "shapes"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image = Image.fromarray(rng.normal(128, 20, (size, size, 3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            cls = ("square", "disc")[int(rng.integers(0, 2))]
            s = int(rng.integers(14, 37))
            x0, y0 = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
            if cls == "square":
                draw.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], fill=(210, 50, 50))
            else:
                draw.ellipse([x0, y0, x0 + s - 1, y0 + s - 1], fill=(50, 70, 210))
            objects.append({"label": cls, "topX": x0 / size, "topY": y0 / size,
                            "bottomX": (x0 + s) / size, "bottomY": (y0 + s) / size})
        path = folder / f"shape_{i:03d}.png"
        image.save(path)
        rows.append({"image_url": str(path.resolve()), "label": objects})
    pool, test = _split(rows, 30)
    return {"task": DET, "pool": _write(root / "shapes_pool.jsonl", pool), "test": _write(root / "shapes_test.jsonl", test),
            "size": 128, "classes": 2}


DATASETS = {"digits": digits, "cells": cells, "fridge": fridge, "shapes": shapes}


# --- the arms ----------------------------------------------------------------------------------------

def _sweep(job: dict, out: Path) -> tuple[Path | None, dict]:
    lines: list[str] = []
    result = run_sweep(parse_job(job), out, device="cpu", echo=lines.append, onnx=False)
    (out / "sweep.log").write_text("\n".join(lines) + "\n")
    doc = json.loads((out / "sweep.json").read_text())
    best = out / "best_model"
    info = {"trials": len(result.trials), "counts": doc["counts"], "compute": doc["compute"],
            "budget": doc.get("budget"), "best_trial": doc.get("best_trial"),
            "best_parameters": result.best.parameters if result.best else None,
            "validation_value": result.best.best_value if result.best else None}
    return (best if (best / "model.safetensors").is_file() else None), info


def _natural(data: dict, model: str | None = None) -> dict:
    """The data's own image size as the model's size settings."""
    s = data["size"]
    if data["task"] == CLS:
        return {"train_crop_size": s, "valid_resize_size": round(s * 8 / 7), "valid_crop_size": s}
    return {"img_size": s} if model == "yolov5" else {"min_size": s, "max_size": s}


def arm_automode(data: dict, budget: float, seed: int, out: Path):
    job = {"task": data["task"], "training_data": str(data["pool"]), "limits": {"budget": budget},
           "sweep": {"seed": seed}, "training_parameters": {"pretrained": False, "seed": seed}}
    return _sweep(job, out)


def arm_random_bandit(data: dict, budget: float, seed: int, out: Path):
    if data["task"] == CLS:
        space = [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
                  "learning_rate": {"type": "uniform", "min_value": 0.001, "max_value": 0.05},
                  "optimizer": {"type": "choice", "values": ["sgd", "adam"]}}]
        fixed = {"number_of_epochs": 15, **_natural(data)}
    else:
        # the spec's example job, at the data's size (fasterrcnn_resnet18_fpn for its resnet50: this is a CPU)
        space = [{"model_name": "yolov5", "img_size": data["size"],
                  "learning_rate": {"type": "uniform", "min_value": 0.0001, "max_value": 0.01},
                  "model_size": {"type": "choice", "values": ["small", "medium"]}},
                 {"model_name": "fasterrcnn_resnet18_fpn", **_natural(data, "fasterrcnn_resnet18_fpn"),
                  "learning_rate": {"type": "uniform", "min_value": 0.0001, "max_value": 0.001},
                  "optimizer": {"type": "choice", "values": ["sgd", "adam", "adamw"]}}]
        fixed = {"number_of_epochs": 20}
    job = {"task": data["task"], "training_data": str(data["pool"]), "limits": {"budget": budget, "max_trials": 200},
           "sweep": {"seed": seed, "early_termination": {"type": "bandit", "slack_factor": 0.2, "evaluation_interval": 1,
                                                         "delay_evaluation": 3}},
           "search_space": space, "training_parameters": {"pretrained": False, "seed": seed, **fixed}}
    return _sweep(job, out)


def _default_model(data: dict) -> str:
    """resnet18 for classification (the default vitb16r224 needs its pretrained weights and a GPU); the
    task's default yolov5 for detection."""
    return "resnet18" if data["task"] == CLS else "yolov5"


def arm_default_trial(data: dict, budget: float, seed: int, out: Path):
    model = _default_model(data)
    base = {"model_name": model, "pretrained": False, "seed": seed, "early_stopping": False,
            **_natural(data, model)}
    calibration = 3
    job = {"task": data["task"], "training_data": str(data["pool"]),
           "training_parameters": {**base, "number_of_epochs": calibration}}
    _sweep(job, out.with_name(out.name + "_calibration"))
    trial = json.loads((out.with_name(out.name + "_calibration") / "sweep.json").read_text())["trials"][0]
    # the seconds an epoch takes between reports, and the start-up before the first: the epochs that fill
    # the budget (5% kept back so that the trial ends inside it)
    at = trial["report_s"]
    rate = (at[-1] - at[0]) / (len(at) - 1)
    startup = max(at[0] - rate, 0.0)
    epochs = max(calibration, int(0.95 * (budget * 3600 - startup) / rate))
    job["training_parameters"] = {**base, "number_of_epochs": epochs}
    best, info = _sweep(job, out)
    info["epochs_for_budget"] = epochs
    return best, info


def _load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _pixels(url: str, size: int) -> torch.Tensor:
    image = Image.open(url).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def arm_plain_loop(data: dict, budget: float, seed: int, out: Path):
    """The plain loop: no augmentation, SGD, the same model, the same seconds (this process' threads
    hold the whole machine, like a trial run alone)."""
    from automl_vision.data.load import split_jsonl

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    split = split_jsonl(data["pool"], ImageTask(data["task"]), out / "split", ratio=0.2, seed=seed)
    train, val = _load_rows(split.train), _load_rows(split.validation)
    deadline = time.monotonic() + budget * 3600
    epochs = 0
    if data["task"] == CLS:
        import torchvision

        classes = sorted({r["label"] for r in train + val})
        index = {c: i for i, c in enumerate(classes)}
        xs = torch.stack([_pixels(r["image_url"], data["size"]) for r in train])
        ys = torch.tensor([index[r["label"]] for r in train])
        xv = torch.stack([_pixels(r["image_url"], data["size"]) for r in val])
        yv = torch.tensor([index[r["label"]] for r in val])
        model = torchvision.models.resnet18(num_classes=len(classes))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        best, best_state = -1.0, None
        while time.monotonic() < deadline:
            model.train()
            order = torch.randperm(len(xs))
            for k in range(0, len(xs), 32):
                batch = order[k:k + 32]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
                opt.step()
                if time.monotonic() >= deadline:
                    break
            epochs += 1
            model.eval()
            with torch.no_grad():
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        model.eval()
        test = _load_rows(data["test"])
        with torch.no_grad():
            xt = torch.stack([_pixels(r["image_url"], data["size"]) for r in test])
            pred = model(xt).argmax(1)
        value = float(np.mean([classes[p] == r["label"] for p, r in zip(pred.tolist(), test)]))
        return None, {"epochs": epochs, "validation_value": best, "test_value": value}
    # detection: the product's fasterrcnn_resnet18_fpn network, trained by a plain loop
    from automl_vision.evaluation.detection_metrics import score_predictions
    from automl_vision.models.detection import DetectorSettings, build_detector, predict_images

    classes = sorted({o["label"] for r in train for o in r["label"]})
    index = {c: i + 1 for i, c in enumerate(classes)}
    settings = DetectorSettings(min_size=data["size"], max_size=data["size"])
    model = build_detector("fasterrcnn", 18, len(classes), pretrained=False, settings=settings)

    def sample(r):
        image = Image.open(r["image_url"]).convert("RGB")
        w, h = image.size
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        boxes = torch.tensor([[o["topX"] * w, o["topY"] * h, o["bottomX"] * w, o["bottomY"] * h] for o in r["label"]])
        return x, {"boxes": boxes, "labels": torch.tensor([index[o["label"]] for o in r["label"]])}

    samples = [sample(r) for r in train]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    while time.monotonic() < deadline:
        model.train()
        order = torch.randperm(len(samples)).tolist()
        for k in range(0, len(order), 2):
            batch = [samples[i] for i in order[k:k + 2]]
            loss = sum(model([b[0] for b in batch], [b[1] for b in batch]).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.monotonic() >= deadline:
                break
        epochs += 1
    model.eval()
    test = _load_rows(data["test"])
    images = [Image.open(r["image_url"]).convert("RGB") for r in test]
    predictions = predict_images(model, images, settings, classes)
    path = _write(out / "test_predictions.jsonl",
                  [{"image_url": r["image_url"], **pred} for r, pred in zip(test, predictions)])
    metrics = score_predictions(ImageTask(DET), data["test"], path)
    return None, {"epochs": epochs, "test_value": float(metrics.to_json()["mean_average_precision"])}


ARMS = {"automode": arm_automode, "random_bandit": arm_random_bandit, "default_trial": arm_default_trial,
        "plain_loop": arm_plain_loop}


def test_score(model: Path, data: dict, out: Path) -> float:
    """The product's metric of a model package on the test set (``automl-vision evaluate``)."""
    metrics_file = out / "test_metrics.json"
    subprocess.run([sys.executable, "-m", "automl_vision", "evaluate", "--model", str(model), "--data",
                    str(data["test"]), "--output-dir", str(out / "test_eval"), "--explain-images", "0",
                    "--output", str(metrics_file)], check=True, capture_output=True, text=True)
    metrics = json.loads(metrics_file.read_text())
    metrics = metrics.get("metrics", metrics)
    return float(metrics["accuracy" if data["task"] == CLS else "mean_average_precision"])


#: Arms run two at a time, each pinned to a core of its own (a 2-core machine), paired so that each pair
#: meets the same load: AutoMode with the hand-written sweep, the default trial with the plain loop.
PAIRS = (("automode", "random_bandit"), ("default_trial", "plain_loop"))


def run_arm(name: str, data: dict, seed: int, arm: str, budget: float, out: Path) -> dict:
    t0 = time.monotonic()
    try:
        model, info = ARMS[arm](data, budget, seed, out)
        if model is not None:
            info["test_value"] = test_score(model, data, out)
    except Exception as e:  # a failed arm is a result too
        info = {"error": f"{type(e).__name__}: {e}"[:500]}
    return {"dataset": name, "seed": seed, "arm": arm, "budget": budget,
            "wall_s": round(time.monotonic() - t0, 1), **info}


def _child(args) -> None:
    """One arm in a process of its own, on the cores it was started on; its row as JSON on stdout."""
    spec = json.loads(args.run_arm)
    data = {k: Path(v) if k in ("pool", "test") else v for k, v in spec["data"].items()}
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    row = run_arm(spec["name"], data, spec["seed"], spec["arm"], spec["budget"], Path(spec["out"]))
    print(ROW + json.dumps(row), flush=True)


ROW = "arm result: "


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,cells,shapes")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--detection-seeds", default="0,1", help="seeds of the detection dataset (its arms cost more)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--budget-classification", type=float, default=0.06, help="device-hours per arm")
    p.add_argument("--budget-detection", type=float, default=0.08, help="device-hours per arm")
    p.add_argument("--out", default="runs/bench-automode")
    p.add_argument("--run-arm", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_arm:
        return _child(args)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results_file = root / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else []
    done = {(r["dataset"], r["seed"], r["arm"]) for r in results}
    seeds = [int(s) for s in args.seeds.split(",")]
    detection_seeds = {int(s) for s in args.detection_seeds.split(",")}
    datasets = {name: DATASETS[name](root / "data") for name in args.datasets.split(",")}
    arms = args.arms.split(",")
    cores = sorted(os.sched_getaffinity(0))
    # seed by seed over every dataset, so that an interrupted run has covered each dataset
    for seed in seeds:
        for name, data in datasets.items():
            if data["task"] == DET and seed not in detection_seeds:
                continue
            budget = args.budget_classification if data["task"] == CLS else args.budget_detection
            for pair in PAIRS:
                todo = [a for a in pair if a in arms and (name, seed, a) not in done]
                procs = []
                for k, arm in enumerate(todo):
                    core = {cores[k % len(cores)]}
                    spec = {"name": name, "seed": seed, "arm": arm, "budget": budget,
                            "out": str(root / name / f"seed{seed}" / arm),
                            "data": {k2: str(v) if isinstance(v, Path) else v for k2, v in data.items()}}
                    procs.append(subprocess.Popen(
                        [sys.executable, __file__, "--run-arm", json.dumps(spec)], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, preexec_fn=lambda c=core: os.sched_setaffinity(0, c)))
                for arm, proc in zip(todo, procs):
                    output, _ = proc.communicate()
                    lines = [ln for ln in output.splitlines() if ln.startswith(ROW)]
                    row = (json.loads(lines[-1][len(ROW):]) if lines else
                           {"dataset": name, "seed": seed, "arm": arm, "budget": budget, "wall_s": 0,
                            "error": output[-500:]})
                    results.append(row)
                    results_file.write_text(json.dumps(results, indent=1))
                    print(f"{name:7s} seed {seed} {arm:14s} test {row.get('test_value', float('nan')):.4f}  "
                          f"val {row.get('validation_value') or float('nan'):.4f}  {row['wall_s']:.0f} s"
                          + (f"  trials {row['trials']}" if "trials" in row else "")
                          + (f"  ERROR {row['error']}" if "error" in row else ""), flush=True)
    summarize(results)


def summarize(results: list[dict]) -> None:
    print("\ndataset  arm             test mean  sd      n   automode - arm (mean, per seed)")
    for name in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == name and "test_value" in r]
        by = {a: {r["seed"]: r["test_value"] for r in rows if r["arm"] == a} for a in ARMS}
        for arm, values in by.items():
            if not values:
                continue
            vals = list(values.values())
            sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
            diff = ""
            if arm != "automode" and by["automode"]:
                common = sorted(set(values) & set(by["automode"]))
                d = [by["automode"][s] - values[s] for s in common]
                if d:
                    diff = f"{statistics.fmean(d):+.4f} ({', '.join(f'{x:+.3f}' for x in d)})"
            print(f"{name:8s} {arm:15s} {statistics.fmean(vals):.4f}     {sd:.4f}  {len(vals)}   {diff}")


if __name__ == "__main__":
    main()
