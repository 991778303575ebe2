"""Record real learning curves for ``sweep_efficiency.py`` to replay.

Runs one random sweep of real ``automl-vision train`` trials with the local scheduler, with no
early termination (every trial runs to its last epoch, and the trials' own early stopping is
off), and writes each trial's primary-metric values (one per epoch) and epoch times to
``benchmarks/curves/<dataset>.json``. Datasets: ``fridge_small150`` (../shared/data, 134 photos)
and ``digits600`` (600 of the handwritten-digit scans the demo uses, from scikit-learn).

    python benchmarks/record_curves.py --dataset fridge_small150 --trials 24 --epochs 20
    python benchmarks/record_curves.py --dataset digits600 --trials 24 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fridge_data import write_fridge_jsonl  # noqa: E402

from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.sweep.local import run_sweep  # noqa: E402

CURVES = Path(__file__).resolve().parent / "curves"
DATASETS = {
    "fridge_small150": "fridge_small150 (134 photos, 4 classes; 20% held out for validation, stratified, seed 0: "
                       "26 images, so one image is 3.8 accuracy points)",
    "digits600": "the first 600 of scikit-learn's 8x8 handwritten digit scans upscaled to 32 px (10 classes; 20% "
                 "held out for validation, stratified, seed 0: 120 images, one image is 0.83 points)",
}
FIXED = {"pretrained": False, "train_crop_size": 32, "valid_resize_size": 32, "valid_crop_size": 32,
         "training_batch_size": 16, "validation_batch_size": 32, "early_stopping": False,
         "warmup_cosine_lr_warmup_epochs": 1}
SPACE = [{
    "model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
    "optimizer": {"type": "choice", "values": ["sgd", "adam", "adamw"]},
    "learning_rate": {"type": "loguniform", "min_value": math.log(3e-4), "max_value": math.log(0.3)},
}]


def _seconds(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="fridge_small150")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work-dir", help="keep the data and the sweep's run folder here, so that an interrupted "
                                       "recording can be run again and resume (default: a temporary folder)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.work_dir) if args.work_dir else Path(tmp)
        if args.dataset == "fridge_small150":
            data = write_fridge_jsonl(base / "data")
        else:
            from automl_vision.demo import write_digits_dataset

            data = write_digits_dataset(base / "data", count=600)
        job = parse_job({
            "task": "image_classification", "training_data": str(data),
            "limits": {"max_trials": args.trials, "max_concurrent_trials": args.concurrent},
            "sweep": {"sampling_algorithm": "random", "seed": args.seed},
            "search_space": SPACE,
            "training_parameters": {**FIXED, "number_of_epochs": args.epochs},
        })
        run_dir = base / "run"
        result = run_sweep(job, run_dir, device="cpu", echo=lambda s: print(s, flush=True),
                           resume=(run_dir / "sweep.json").is_file())
        trials = []
        for t in result.trials:
            metrics = run_dir / "trials" / t.trial_id / "metrics.jsonl"
            rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
            stamps = [_seconds(t.started_at)] + [_seconds(r["timestamp"]) for r in rows]
            trials.append({"trial_id": t.trial_id, "parameters": t.parameters, "status": t.status,
                           "values": t.values,
                           "epoch_seconds": [max(1.0, b - a) for a, b in zip(stamps, stamps[1:])]})
    doc = {
        "dataset": DATASETS[args.dataset],
        "primary_metric": "accuracy", "maximize": True, "number_of_epochs": args.epochs,
        "how_recorded": (
            f"benchmarks/record_curves.py --dataset {args.dataset} --trials {args.trials} --epochs {args.epochs} "
            f"--concurrent {args.concurrent} --seed {args.seed}: one random sweep of real automl-vision train trials on this "
            f"project's shared 2-core CPU machine, {args.concurrent} at a time, no early termination and no "
            f"early stopping, every trial to its last epoch. Search space: {json.dumps(SPACE)}; fixed: "
            f"{json.dumps(FIXED)}. values: validation accuracy after each epoch; epoch_seconds: wall time of "
            "each epoch from the metric timestamps (1 s resolution; the first includes start-up; noisy, the "
            "machine is shared). A diverged trial keeps the values it reported before its loss became "
            "non-finite."),
        "trials": trials,
    }
    out = CURVES / f"{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(trials)} curves to {out}")


if __name__ == "__main__":
    main()
