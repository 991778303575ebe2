"""Steady-state images/s of our training step against a minimal hand-written PyTorch loop.

Both run the same model architecture, optimizer settings, batch and in-memory tensors, in one
process, interleaved round by round (this machine is shared and noisy); the figure is the ratio
of the medians. Goal: at least 0.95.

    python benchmarks/train_throughput.py                       # resnet18, 64x64, batch 32, CPU
    python benchmarks/train_throughput.py --model resnet50 --size 224 --batch 256 --device cuda

"Our step" is ``train_one_epoch`` of the trial, on the ``Training`` that ``build_training`` builds
from a job's hyperparameters: loss bookkeeping, divergence checks, the learning-rate schedule,
gradient-accumulation logic, progress. On CUDA both use mixed precision and channels_last, and a
second line gives our step fed uint8 images with its colour jitter on the GPU (what the loaders
hand it in a real trial) against the same bare loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automl_vision.models.registry import build_model  # noqa: E402
from automl_vision.spec.hyperparameters import resolve  # noqa: E402
from automl_vision.spec.tasks import ImageTask  # noqa: E402
from automl_vision.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from automl_vision.training.classification import amp_dtype_for, build_training, train_one_epoch  # noqa: E402
from automl_vision.training.trial import TrialSettings  # noqa: E402

TASK = ImageTask.IMAGE_CLASSIFICATION


def tiny_jsonl(folder: Path, classes: int) -> Path:
    """A few images so that ``build_training`` can build its loaders (the benchmark does not use them)."""
    rng = np.random.default_rng(0)
    lines = []
    for c in range(classes):
        for i in range(3):
            name = f"c{c}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / name)
            lines.append(json.dumps({"image_url": name, "label": f"class{c}"}))
    path = folder / "tiny.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_ours(args, folder: Path):
    hp = resolve(TASK, {"model_name": args.model, "pretrained": False, "training_batch_size": args.batch,
                        "train_crop_size": args.size, "valid_crop_size": args.size,
                        "valid_resize_size": args.size, "number_of_epochs": 100, "optimizer": "sgd"})
    settings = TrialSettings(task=TASK, training_data=str(tiny_jsonl(folder, args.classes)), validation_data=None,
                             hyperparameters=hp, output_dir=str(folder / "out"), device=args.device, num_workers=0)
    return build_training(settings)


class BareLoop:
    """What a person writes by hand: forward, loss, backward, step (mixed precision and channels_last on CUDA)."""

    def __init__(self, args, hp, device):
        torch.manual_seed(0)
        self.device = device
        self.model = build_model(args.model, TASK, args.classes, pretrained=False, image_size=args.size)
        self.channels_last = device.type == "cuda"
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=hp["learning_rate"], momentum=hp["momentum"],
                                   nesterov=bool(hp["nesterov"]), weight_decay=hp["weight_decay"])
        self.loss = torch.nn.CrossEntropyLoss()
        self.amp = amp_dtype_for(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

    def run(self, batches):
        self.model.train()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in batches:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                out = self.model(x)
            loss = self.loss(out.float(), y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, images) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return images / (time.perf_counter() - t0)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return p.parse_args(argv)


def measure(args) -> dict:
    """Median images/s of each variant and what they ran on."""
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_ours(args, Path(tmp))
        device = ours.device
        bare = BareLoop(args, ours.hp, device)
        g = torch.Generator().manual_seed(0)
        raw = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=g)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        floats = (raw.float() / 255 - mean) / std
        labels = torch.randint(0, args.classes, (args.batch,), generator=g)
        if device.type == "cuda":
            floats, raw, labels = floats.pin_memory(), raw.pin_memory(), labels.pin_memory()
        same = [(floats, labels)] * args.steps
        as_loaded = [(raw, labels)] * args.steps
        images = args.batch * args.steps
        step = [0]

        def run_ours(batches):
            step[0], _ = train_one_epoch(ours, batches, 1, step[0])

        variants = {"ours": lambda: run_ours(same), "bare": lambda: bare.run(same)}
        if device.type == "cuda":
            variants["ours_uint8_jitter"] = lambda: run_ours(as_loaded)
        for fn in variants.values():  # warm-up: allocator, cudnn autotuning, first-call costs
            fn()
            fn()
        rates: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.rounds):
            order = list(variants.items())
            if r % 2:  # alternate the order so that drift in the machine's load hits both alike
                order.reverse()
            for name, fn in order:
                rates[name].append(timed(fn, device, images))
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        weight = next(p for p in ours.module.parameters() if p.dim() == 4)
        info = {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads",
            "precision": str(ours.amp_dtype).removeprefix("torch.") if ours.amp_dtype else "float32",
            "channels_last": weight.is_contiguous(memory_format=torch.channels_last) and device.type == "cuda",
            "peak_memory_gib": memory,
        }
    return {"rates": rates, "median": {k: statistics.median(v) for k, v in rates.items()}, "info": info}


def report(args, m: dict) -> None:
    med, info = m["median"], m["info"]
    print(f"train_throughput: {args.model}, {args.size}x{args.size}, batch {args.batch}, {info['device']} "
          f"({info['device_name']}), {info['precision']}{', channels_last' if info['channels_last'] else ''}")
    print(f"  {args.rounds} rounds of {args.steps} steps, interleaved; images/s per round:")
    for k, v in m["rates"].items():
        print(f"  {k:18s} median {med[k]:9.1f}   rounds {' '.join(f'{x:.1f}' for x in v)}")
    print(f"  ratio ours / bare: {med['ours'] / med['bare']:.3f}   (goal >= 0.95)")
    if "ours_uint8_jitter" in med:
        print(f"  ratio ours with uint8 input and GPU colour jitter / bare: "
              f"{med['ours_uint8_jitter'] / med['bare']:.3f}")


def main(argv=None) -> int:
    args = parse(argv)
    report(args, measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
