"""Data stalls: training images/s reading and augmenting real JPEGs from disk, against the same
training on in-memory tensors. Goal: at least 0.9 with the default worker count.

    python benchmarks/data_stalls.py                      # default workers for this machine
    python benchmarks/data_stalls.py --workers 0 1 2      # several worker counts side by side

The photos are ../shared/data/fridge_small150 (134 JPEGs, 4 classes). "Disk" is the trial's own
training loader (decode, random resized crop, flip, and on a CPU device the colour jitter);
"memory" feeds the same training step the batches that loader produced, kept in memory.
Epochs alternate between the two; the first epoch of each is a warm-up (worker start-up). The
loader alone (no training) is timed too: when it is slower than the model, the model waits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automl_vision.spec.hyperparameters import resolve  # noqa: E402
from automl_vision.spec.tasks import ImageTask  # noqa: E402
from automl_vision.training.classification import build_training, train_one_epoch  # noqa: E402
from automl_vision.training.trial import TrialSettings, default_num_workers  # noqa: E402

FRIDGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fridge_small150"
TASK = ImageTask.IMAGE_CLASSIFICATION


def fridge_jsonl(folder: Path) -> Path:
    images = sorted(FRIDGE.glob("*.jpg"))
    if not images:
        raise SystemExit(f"no photos in {FRIDGE}")
    path = folder / "fridge.jsonl"
    path.write_text("".join(json.dumps({"image_url": str(p), "label": p.stem.rsplit("_", 1)[0]}) + "\n"
                            for p in images))
    return path


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, data: Path, out: Path, workers: int | None) -> dict[str, float]:
    hp = resolve(TASK, {"model_name": args.model, "pretrained": False, "training_batch_size": args.batch,
                        "train_crop_size": args.crop, "valid_crop_size": args.crop,
                        "valid_resize_size": args.crop, "number_of_epochs": 100})
    t = build_training(TrialSettings(task=TASK, training_data=str(data), validation_data=None, hyperparameters=hp,
                                     output_dir=str(out), device=args.device, num_workers=workers))
    loader = t.train_loader
    images = len(loader) * args.batch

    def timed(fn) -> float:
        sync(t.device)
        t0 = time.perf_counter()
        fn()
        sync(t.device)
        return images / (time.perf_counter() - t0)

    # the loader alone
    for _ in loader:
        pass
    load_only = statistics.median(timed(lambda: [None for _ in loader]) for _ in range(2))
    cached = [(x.clone(), y.clone()) for x, y in loader]
    if t.device.type == "cuda":
        cached = [(x.pin_memory(), y.pin_memory()) for x, y in cached]
    step = [0]

    def train(batches):
        step[0], _ = train_one_epoch(t, batches, 1, step[0])

    disk, memory = [], []
    for epoch in range(args.epochs + 1):
        order = [(disk, loader), (memory, cached)]
        if epoch % 2:
            order.reverse()
        for sink, batches in order:
            rate = timed(lambda b=batches: train(b))
            if epoch:  # epoch 0 warms up both
                sink.append(rate)
    return {"workers": loader.num_workers, "disk": statistics.median(disk), "memory": statistics.median(memory),
            "load_only": load_only, "images": images}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of each kind")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, nargs="*", default=None,
                   help="worker counts to compare (default: the trial's default for this machine)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = args.workers if args.workers else [None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = fridge_jsonl(Path(tmp))
        for w in counts:
            rows.append(measure(args, data, Path(tmp) / "out", w))
    import os

    cores = len(os.sched_getaffinity(0))
    print(f"data_stalls: {args.model}, crop {args.crop}, batch {args.batch}, device {args.device}, {cores} cores, "
          f"torch threads {torch.get_num_threads()}, default workers here {default_num_workers()}")
    print(f"  fridge_small150 JPEGs, {rows[0]['images']} training images per epoch, median of {args.epochs} epochs")
    print(f"  {'workers':>7s} {'disk img/s':>11s} {'memory img/s':>13s} {'ratio':>6s} {'loader alone img/s':>19s}")
    for r in rows:
        print(f"  {r['workers']:7d} {r['disk']:11.1f} {r['memory']:13.1f} {r['disk'] / r['memory']:6.3f} "
              f"{r['load_only']:19.1f}")
    print("  goal: ratio >= 0.9 with the default worker count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
