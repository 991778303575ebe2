"""Our detection training step against torchvision's plain training step: same model, same batch,
in-memory data, images per second. Goal: ratio >= 0.95.

"Ours" is what the trial's loop does per batch (``training/detection.py``): move the batch to the
device, ``train_step`` (forward in autocast on CUDA, loss sum, scaled backward), optimizer step
through the grad scaler, zero_grad, scheduler step, read the loss back and check it is finite.
"Plain" is the step of torchvision's detection reference script (forward, sum, ``.item()``,
zero_grad, backward, step). The two run on identical copies of the model, interleaved, so that
machine noise falls on both; the figure is the median over rounds.

    python benchmarks/det_train_step.py [--model fasterrcnn_resnet50_fpn] [--size 320] [--batch 2]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fasterrcnn_resnet50_fpn")
    ap.add_argument("--size", type=int, default=320, help="min_size (images are size x 4/3 size)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="steps per round and side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from automl_vision.models.detection import DetectorSettings
    from automl_vision.models.registry import get_entry
    from automl_vision.spec import hyperparameters as hps
    from automl_vision.spec.tasks import SEGMENTATION_MODELS, ImageTask
    from automl_vision.training.detection import to_device, train_step
    from automl_vision.training.optim import build_optimizer, build_scheduler

    task = ImageTask.IMAGE_INSTANCE_SEGMENTATION if args.model in SEGMENTATION_MODELS else ImageTask.IMAGE_OBJECT_DETECTION
    device = torch.device(args.device)
    torch.manual_seed(0)
    settings = DetectorSettings(min_size=args.size, max_size=args.size * 2)
    base = get_entry(args.model, task).builder(3, pretrained=False, settings=settings)
    ours_model, plain_model = base.to(device), copy.deepcopy(base).to(device)

    h, w = args.size, args.size * 4 // 3
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) for _ in range(args.batch)]
    targets = []
    for _ in range(args.batch):
        xy = torch.rand(6, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        boxes = torch.cat([xy, xy + 20 + torch.rand(6, 2, generator=g) * 60], 1)
        t = {"boxes": boxes, "labels": torch.randint(1, 4, (6,), generator=g)}
        if task is ImageTask.IMAGE_INSTANCE_SEGMENTATION:
            m = torch.zeros(6, h, w, dtype=torch.uint8)
            for k, b in enumerate(boxes.long()):
                m[k, b[1]:b[3], b[0]:b[2]] = 1
            t["masks"] = m
        targets.append(t)

    hp = hps.resolve(task, {"model_name": args.model, "optimizer": "sgd", "learning_rate": 0.001})
    opt_ours = build_optimizer(ours_model.parameters(), hp)
    sched_ours = build_scheduler(opt_ours, hp, 100)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    opt_plain = torch.optim.SGD([p for p in plain_model.parameters() if p.requires_grad], lr=0.001, momentum=0.9,
                                weight_decay=1e-4, nesterov=True)
    ours_model.train()
    plain_model.train()

    def ours_step():
        ims, tgs = to_device(images, targets, device)
        loss = train_step(ours_model, ims, tgs, scaler, device)
        value = float(loss)
        if not math.isfinite(value):
            raise RuntimeError("diverged")
        scaler.step(opt_ours)
        scaler.update()
        opt_ours.zero_grad(set_to_none=True)
        sched_ours.step()

    def plain_step():
        ims = [im.to(device) for im in images]
        tgs = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss_dict = plain_model(ims, tgs)
            losses = sum(loss for loss in loss_dict.values())
        losses.item()
        opt_plain.zero_grad()
        scaler.scale(losses).backward() if device.type == "cuda" else losses.backward()
        if device.type == "cuda":
            scaler.step(opt_plain)
            scaler.update()
        else:
            opt_plain.step()

    def timed(step) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * args.batch / (time.perf_counter() - t)

    ours_step(), plain_step()  # warm-up (allocator, cudnn autotune)
    ours, plain = [], []
    for r in range(args.rounds):
        pair = (ours_step, plain_step) if r % 2 == 0 else (plain_step, ours_step)
        a, b = timed(pair[0]), timed(pair[1])
        (ours.append(a), plain.append(b)) if r % 2 == 0 else (plain.append(a), ours.append(b))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.model}, batch {args.batch} of {w}x{h}, {args.rounds} rounds x {args.steps} steps, {name}")
    print(f"ours:  {statistics.median(ours):7.2f} images/s  (rounds: {', '.join(f'{x:.2f}' for x in ours)})")
    print(f"plain: {statistics.median(plain):7.2f} images/s  (rounds: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"ratio ours / plain: {statistics.median(ours) / statistics.median(plain):.3f}   (goal >= 0.95)")


if __name__ == "__main__":
    main()
