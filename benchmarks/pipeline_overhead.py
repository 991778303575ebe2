"""What kfp's local runner costs over calling the library directly, on the demo's data and job.

Side by side in one run, on the same data and the same job:
  direct    each step's component function called in this process (``component.python_func``: the
            same library call with the same arguments, no kfp runner, no subprocess per step)
  pipeline  the whole pipeline on kfp's local runner (``SubprocessRunner(use_venv=False)``), as
            ``automl-vision run`` runs it: one subprocess per step, executor input/output JSON

Trials are subprocesses in both (that is how the sweep runs them), so the difference is the runner:
one Python start and one import of the step's libraries per step, the executor's JSON round trip.

    .venv/bin/python benchmarks/pipeline_overhead.py            # the demo's data, 2 trials x 1 epoch
    .venv/bin/python benchmarks/pipeline_overhead.py --full     # exactly the demo's job (4 x 6 epochs)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model  # noqa: E402

from automl_vision.demo import DEMO_IMAGES, demo_job, write_digits_dataset  # noqa: E402
from automl_vision.pipeline import components as C  # noqa: E402
from automl_vision.pipeline.local import run_pipeline_locally  # noqa: E402
from automl_vision.pipeline.pipeline import pipeline_arguments  # noqa: E402
from automl_vision.spec.job import parse_job  # noqa: E402


def run_direct(args: dict, out: Path) -> dict[str, float]:
    """Each step's component function in this process, in the pipeline's order; seconds per step."""
    a = lambda kind, name: kind(uri=str(out / name))  # noqa: E731
    dataset, validation, run = a(Dataset, "dataset"), a(Dataset, "validation"), a(Artifact, "run")
    evaluation = a(Artifact, "evaluation")
    steps = {
        "ingest": lambda: C.ingest.python_func(task=args["task"], training_data=args["training_data"],
                                               dataset=dataset, validation=validation,
                                               statistics=a(Metrics, "statistics"),
                                               training_parameters=args["training_parameters"]),
        "preview": lambda: C.preview.python_func(task=args["task"], training_data=args["training_data"],
                                                 preview=a(HTML, "preview"),
                                                 training_parameters=args["training_parameters"]),
        "sweep": lambda: C.sweep.python_func(task=args["task"], training_data=dataset, limits=args["limits"],
                                             sweep=args["sweep"], search_space=args["search_space"],
                                             training_parameters=args["training_parameters"], run=run,
                                             leaderboard=a(Metrics, "leaderboard"), device=args["device"]),
        "evaluate": lambda: C.evaluate.python_func(run=run, validation_split=validation, metrics=a(Metrics, "m"),
                                                   classification_metrics=a(ClassificationMetrics, "cm"),
                                                   report=a(HTML, "report"), evaluation=evaluation),
        "report": lambda: C.report.python_func(run=run, dataset=dataset, evaluation=evaluation,
                                               validation_split=validation, report=a(HTML, "run_report")),
        "package": lambda: C.package.python_func(run=run, model=a(Model, "model")),
    }
    times = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        step()
        times[name] = time.perf_counter() - t0
    return times


def trial_seconds(run_dir: Path) -> float:
    """Seconds the sweep's trials took (the same work on both sides; on a busy machine the noisiest part)."""
    board = json.loads((run_dir / "leaderboard.json").read_text())
    return sum(t["duration_s"] or 0.0 for t in board["trials"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the demo's whole job (4 trials x 6 epochs)")
    parser.add_argument("--images", type=int, default=DEMO_IMAGES, help=f"digit images (default: the demo's {DEMO_IMAGES})")
    parser.add_argument("--trials", type=int, default=2, help="trials without --full (default: 2)")
    parser.add_argument("--keep", help="keep the run folders here")
    opts = parser.parse_args()

    work = Path(opts.keep or tempfile.mkdtemp(prefix="pipeline-overhead-"))
    data = write_digits_dataset(work / "data", count=opts.images)
    spec = demo_job(str(data))
    if not opts.full:
        spec["limits"]["max_trials"] = opts.trials
        spec["search_space"][0]["learning_rate"]["values"] = [0.02]
        spec["training_parameters"]["number_of_epochs"] = 1
    job = parse_job(spec)
    args = pipeline_arguments(job, device="cpu")
    print(f"job: {'the demo (4 trials x 6 epochs)' if opts.full else f'{opts.trials} trial(s) x 1 epoch'} on "
          f"{sum(1 for _ in open(data))} of the demo's digit images; {os.cpu_count()} CPU(s); device cpu", flush=True)

    direct_dir = work / "direct"
    t0 = time.perf_counter()
    direct = run_direct(args, direct_dir)
    print("direct: " + ", ".join(f"{k} {v:.1f} s" for k, v in direct.items()), flush=True)
    direct_total = time.perf_counter() - t0

    t0 = time.perf_counter()
    run = run_pipeline_locally(job, work / "pipeline", device="cpu", echo=lambda s: None)
    pipeline_total = time.perf_counter() - t0
    run.raise_for_failure()
    piped = {s.name: s.duration_s for s in run.steps}

    print(f"\n{'step':10s} {'direct s':>9s} {'pipeline s':>11s} {'overhead s':>11s}")
    for name in direct:
        print(f"{name:10s} {direct[name]:9.1f} {piped[name]:11.1f} {piped[name] - direct[name]:11.1f}")
    overhead = pipeline_total - direct_total
    print(f"{'total':10s} {direct_total:9.1f} {pipeline_total:11.1f} {overhead:11.1f}")
    trials_direct, trials_pipeline = trial_seconds(direct_dir / "run"), trial_seconds(work / "pipeline")
    outside = (pipeline_total - trials_pipeline) - (direct_total - trials_direct)
    print(f"{'(trials)':10s} {trials_direct:9.1f} {trials_pipeline:11.1f} {trials_pipeline - trials_direct:11.1f}")
    print(f"\npipeline / direct: {pipeline_total / direct_total:.2f}x; the runner's overhead is "
          f"{100 * overhead / pipeline_total:.1f}% of the pipeline run ({overhead / len(direct):.1f} s per step)")
    print(f"outside the trials (the same trials take different times on a busy machine): "
          f"{outside:.1f} s, {100 * outside / pipeline_total:.1f}% of the pipeline run "
          f"({outside / len(direct):.1f} s per step)")
    if not opts.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
