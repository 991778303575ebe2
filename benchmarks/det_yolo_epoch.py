"""yolov5 through our trial against a direct ultralytics ``train`` call on the same data and
settings: time per epoch. Goal: ratio <= 1.05.

Both runs use the same YOLO dataset (written once by our trial code from BCCD images), the same
ultralytics arguments (``training/yolo.py: ultralytics_overrides``) and the same model YAML. Epoch
times are the differences of the ``time`` column of ultralytics' ``results.csv`` (written at the
end of every epoch in both runs, validation included; ours also scores its predictions with our
metric, reports them and saves the package; its evaluation of epoch k lands in epoch k+1's time).
Runs alternate in ABBA order; epoch 1 of each run is left out (one-off start costs). Whole-call
times are printed too.

    python benchmarks/det_yolo_epoch.py [--train 32] [--val 16] [--img_size 320] [--epochs 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd"


def bccd_jsonl(out: Path, image_set: str, limit: int) -> Path:
    from automl_vision.data.convert import voc_to_jsonl

    lines = voc_to_jsonl(BCCD, out, image_set=image_set).lines[:limit]
    for line in lines:  # BCCD holds two zero-area boxes; the data layer rejects them
        line["label"] = [o for o in line["label"] if o["bottomX"] > o["topX"] and o["bottomY"] > o["topY"]]
    path = out / f"{image_set}.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def epoch_times(results_csv: Path) -> list[float]:
    with results_csv.open() as f:
        t = [float(row["time"]) for row in csv.DictReader(f)]
    return [b - a for a, b in zip([0.0] + t[:-1], t)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--val", type=int, default=16)
    ap.add_argument("--img_size", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model_size", default="small")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, in ABBA order")
    args = ap.parse_args()

    from automl_vision.models import yolo
    from automl_vision.spec import hyperparameters as hps
    from automl_vision.spec.tasks import ImageTask
    from automl_vision.training.reporter import MetricsReporter
    from automl_vision.training.trial import TrialSettings
    from automl_vision.training.yolo import train_yolo, ultralytics_overrides

    root = Path(tempfile.mkdtemp(prefix="det-yolo-bench-"))
    yolo.prepare_ultralytics(root / "ultralytics_config")
    train, val = bccd_jsonl(root, "train", args.train), bccd_jsonl(root, "val", args.val)
    task = ImageTask.IMAGE_OBJECT_DETECTION
    hp = hps.resolve(task, {"model_name": "yolov5", "model_size": args.model_size, "img_size": args.img_size,
                            "number_of_epochs": args.epochs, "training_batch_size": args.batch,
                            "validation_batch_size": args.batch * 2, "pretrained": 0, "early_stopping": 0})
    device = args.device if args.device != "auto" else ("0" if torch.cuda.is_available() else "cpu")

    def ours_run(k: int) -> tuple[list[float], float]:
        settings = TrialSettings(task=task, training_data=str(train), validation_data=str(val), hyperparameters=hp,
                                 output_dir=str(root / f"ours{k}"), device=args.device, num_workers=0)
        t = time.perf_counter()
        with open(root / f"ours{k}.metrics.txt", "w") as stream:
            train_yolo(settings, MetricsReporter(root / f"ours{k}" / "metrics.jsonl", stream=stream))
        return epoch_times(root / f"ours{k}" / "ultralytics" / "results.csv"), time.perf_counter() - t

    def direct_run(k: int) -> tuple[list[float], float]:
        # The same dataset files and arguments, ultralytics' own trainer and validator.
        from ultralytics import YOLO

        overrides = ultralytics_overrides(hp, root / "ours0" / "yolo_data" / "data.yaml", root / f"direct{k}",
                                               device, 0)
        for key in ("model", "task", "mode"):
            overrides.pop(key)
        t = time.perf_counter()
        YOLO(yolo.yaml_name(args.model_size)).train(**overrides)
        return epoch_times(root / f"direct{k}" / "ultralytics" / "results.csv"), time.perf_counter() - t

    # ABBA order (ours, direct, direct, ours...) so that drift in machine load falls on both.
    ours, direct, ours_total, direct_total = [], [], 0.0, 0.0
    for r in range(args.repeats):
        for side in (("ours", "direct") if r % 2 == 0 else ("direct", "ours")):
            times, total = ours_run(r) if side == "ours" else direct_run(r)
            # The first epoch carries one-off costs (dataloader start, allocator): keep epochs 2..
            (ours if side == "ours" else direct).extend(times[1:] or times)
            if side == "ours":
                ours_total += total
            else:
                direct_total += total

    device_name = torch.cuda.get_device_name(0) if device not in ("cpu", "mps") else "cpu"
    print(f"yolov5 {args.model_size}, {args.train} train / {args.val} val BCCD images at {args.img_size}, "
          f"batch {args.batch}, {args.epochs} epochs, {args.repeats} runs each, {device_name}")
    print("ours   epoch s (epochs 2..): " + ", ".join(f"{x:.2f}" for x in ours) + f"   (whole calls {ours_total:.1f} s)")
    print("direct epoch s (epochs 2..): " + ", ".join(f"{x:.2f}" for x in direct) + f"   (whole calls {direct_total:.1f} s)")
    print(f"ratio ours / direct: median epoch {statistics.median(ours) / statistics.median(direct):.3f}   "
          f"mean epoch {sum(ours) / len(ours) / (sum(direct) / len(direct)):.3f}   "
          f"whole calls {ours_total / direct_total:.3f}   (goal <= 1.05)")
    print(f"files: {root}")


if __name__ == "__main__":
    main()
