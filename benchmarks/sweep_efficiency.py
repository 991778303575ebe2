"""How much compute early termination saves, and what it costs in best metric.

1. Replay: the learning curves recorded from real trials (``curves/*.json``: fridge_small150 and
   600 handwritten digits, see ``record_curves.py`` and each file's ``how_recorded``) go through the sweep's own
   bookkeeping (``automl_vision.sweep.replay``) under each policy, in the recorded order and in
   ``--orders`` random orders, one trial at a time and several at once. Printed: the share of
   trial-epochs used and the loss in best metric against no early termination (in points: 1 point =
   0.01 accuracy).
2. Real: one random sweep on fridge_small150 run twice with the local scheduler, with and without
   bandit, side by side: wall time, trial-epochs and best metric.

    python benchmarks/sweep_efficiency.py              # both
    python benchmarks/sweep_efficiency.py --replay-only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fridge_data import write_fridge_jsonl  # noqa: E402

from automl_vision.spec.job import parse_job  # noqa: E402
from automl_vision.spec.policies import (  # noqa: E402
    AshaPolicy,
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
)
from automl_vision.sweep.local import run_sweep  # noqa: E402
from automl_vision.sweep.replay import Curve, replay  # noqa: E402

CURVES = Path(__file__).resolve().parent / "curves"
GOAL_SAVED, GOAL_LOSS_POINTS = 0.5, 0.5

POLICIES = [
    ("none", None),
    ("bandit slack_factor 0.1, delay 1", BanditPolicy(slack_factor=0.1, delay_evaluation=1)),
    ("bandit slack_factor 0.2, delay 1", BanditPolicy(slack_factor=0.2, delay_evaluation=1)),
    ("bandit slack_factor 0.2, delay 3", BanditPolicy(slack_factor=0.2, delay_evaluation=3)),
    ("bandit slack_factor 0.2, delay 5", BanditPolicy(slack_factor=0.2, delay_evaluation=5)),
    ("bandit slack_factor 0.5, delay 3", BanditPolicy(slack_factor=0.5, delay_evaluation=3)),
    ("bandit slack_amount 0.1, delay 3", BanditPolicy(slack_amount=0.1, delay_evaluation=3)),
    ("median_stopping delay 1", MedianStoppingPolicy(delay_evaluation=1)),
    ("median_stopping delay 3", MedianStoppingPolicy(delay_evaluation=3)),
    ("median_stopping delay 5 (spec's advice)", MedianStoppingPolicy(delay_evaluation=5)),
    ("truncation_selection 25%, delay 3", TruncationSelectionPolicy(truncation_percentage=25, delay_evaluation=3)),
    ("truncation_selection 50%, delay 3", TruncationSelectionPolicy(truncation_percentage=50, delay_evaluation=3)),
    ("truncation_selection 50%, delay 5", TruncationSelectionPolicy(truncation_percentage=50, delay_evaluation=5)),
    ("asha eta 3, min_resource 1", AshaPolicy(min_resource=1, reduction_factor=3)),
    ("asha eta 3, min_resource 2", AshaPolicy(min_resource=2, reduction_factor=3)),
]


def policies(epochs: int) -> list[tuple[str, object]]:
    """The policies replayed on curves of ``epochs`` intervals: hyperband's max_resource is that length."""
    return POLICIES + [
        (f"hyperband eta 3, min_resource {r}, max {epochs}", HyperbandPolicy(min_resource=r, max_resource=epochs))
        for r in (1, 2)
    ]


def load_curves(path: Path) -> tuple[list[Curve], dict]:
    doc = json.loads(path.read_text())
    epochs = doc["number_of_epochs"]
    curves = [Curve(tuple(t["values"]), tuple(t["epoch_seconds"]), "completed" if t["status"] == "completed"
                    else t["status"], planned=epochs, parameters=t["parameters"]) for t in doc["trials"]]
    return curves, doc


def replay_table(curves: list[Curve], maximize: bool, orders: int, concurrency: int,
                 rows: list[tuple[str, object]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    permutations = [list(range(len(curves)))] + [list(rng.permutation(len(curves))) for _ in range(orders)]
    full_epochs = sum(len(c.values) for c in curves)
    full_seconds = sum(sum(c.seconds[: len(c.values)]) for c in curves)
    print(f"\n{len(curves)} recorded trials, {full_epochs} trial-epochs without early termination; "
          f"{concurrency} at once; recorded order + {orders} random orders")
    head = f"{'policy':42s} {'epochs used':>11s} {'time used':>9s} {'loss recorded':>13s} " \
           f"{'loss mean':>9s} {'loss max':>8s} {'orders lost':>11s}  goal met"
    print(head)
    print("-" * len(head))
    for name, policy in rows:
        used, seconds, losses = [], [], []
        for perm in permutations:
            order = [curves[i] for i in perm]
            base = replay(order, None, maximize=maximize, concurrency=concurrency).best_value
            got = replay(order, policy, maximize=maximize, concurrency=concurrency)
            used.append(got.intervals_used / full_epochs)
            seconds.append(got.seconds_used / full_seconds)
            loss = (base - got.best_value) if maximize else (got.best_value - base)
            losses.append(100 * loss)
        share = float(np.mean(used))
        on_average = (1 - share) >= GOAL_SAVED and np.mean(losses) <= GOAL_LOSS_POINTS
        always = on_average and max(losses) <= GOAL_LOSS_POINTS
        print(f"{name:42s} {share:11.1%} {np.mean(seconds):9.1%} {losses[0]:13.2f} {np.mean(losses):9.2f} "
              f"{max(losses):8.2f} {sum(x > 0 for x in losses):6d}/{len(losses):<4d}  "
              f"{'in every order' if always else 'on average' if on_average else 'no'}")


def real_sweeps(trials: int, epochs: int, seed: int) -> None:
    space = [{
        "model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
        "optimizer": {"type": "choice", "values": ["sgd", "adam", "adamw"]},
        "learning_rate": {"type": "loguniform", "min_value": math.log(3e-4), "max_value": math.log(0.3)},
    }]
    fixed = {"pretrained": False, "train_crop_size": 32, "valid_resize_size": 32, "valid_crop_size": 32,
             "training_batch_size": 16, "validation_batch_size": 32, "early_stopping": False,
             "warmup_cosine_lr_warmup_epochs": 1, "number_of_epochs": epochs}
    bandit = {"type": "bandit", "slack_factor": 0.2, "evaluation_interval": 1, "delay_evaluation": 2}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_fridge_jsonl(Path(tmp) / "data")
        for name, policy in (("no early termination", None), ("bandit slack_factor 0.2, delay 2", bandit)):
            job = parse_job({"task": "image_classification", "training_data": str(data),
                             "limits": {"max_trials": trials, "max_concurrent_trials": 1},
                             "sweep": {"sampling_algorithm": "random", "seed": seed, "early_termination": policy},
                             "search_space": space, "training_parameters": fixed})
            t0 = time.monotonic()
            result = run_sweep(job, Path(tmp) / name.split()[0], device="cpu", echo=lambda s: None)
            wall = time.monotonic() - t0
            best = result.best
            rows.append((name, wall, result.compute, best))
            print(f"  {name}: done in {wall:.0f} s", flush=True)
    print(f"\nreal sweeps on fridge_small150: {trials} random trials of {epochs} epochs (32 px, random init), "
          f"one at a time, same seed")
    print(f"{'sweep':34s} {'wall s':>7s} {'trial-epochs':>12s} {'best accuracy':>13s}  best trial")
    for name, wall, compute, best in rows:
        print(f"{name:34s} {wall:7.0f} {compute['trial_epochs']:12d} "
              f"{best.best_value if best else float('nan'):13.4f}  {best.trial_id if best else '-'}")
    (n0, w0, c0, b0), (n1, w1, c1, b1) = rows
    print(f"bandit / none: wall time {w1 / w0:.2f}, trial-epochs {c1['trial_epochs'] / c0['trial_epochs']:.2f}, "
          f"best accuracy {((b1.best_value if b1 else 0) - (b0.best_value if b0 else 0)) * 100:+.2f} points")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=200, help="random trial orders replayed (default: 200)")
    ap.add_argument("--replay-only", action="store_true")
    ap.add_argument("--trials", type=int, default=8, help="trials of each real sweep (default: 8)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of each real trial (default: 6)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    for path in sorted(CURVES.glob("*.json")):
        curves, doc = load_curves(path)
        best = max((max(c.values) for c in curves if c.values), default=float("nan"))
        print(f"\n=== {path.name}: {len(curves)} trials of {doc['number_of_epochs']} epochs, best "
              f"{doc['primary_metric']} {best:.4f}; {doc['dataset']}")
        for concurrency in (1, 4):
            replay_table(curves, doc["maximize"], args.orders, concurrency, policies(doc["number_of_epochs"]))
    print(f"\ngoal: at least {GOAL_SAVED:.0%} of trial-epochs saved with at most {GOAL_LOSS_POINTS} points of best "
          f"metric lost, on average over the orders replayed or in every one of them. epochs used / time used: "
          f"share of the trial-epochs / trial-seconds a sweep without early termination uses (time counts each "
          f"trial's start-up); loss: best metric without early termination minus with it, in points, in the "
          f"recorded order, on average, at worst; orders lost: orders where the policy lost anything")
    if not args.replay_only:
        real_sweeps(args.trials, args.epochs, args.seed)


if __name__ == "__main__":
    main()
