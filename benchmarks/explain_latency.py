"""Explanation cost, measured side by side in one run on this machine: the seconds one explained image
takes with each method (``Explainer(engine).explain``, what the server runs for ``model_explainability``),
against one plain forward of the same engine (``engine.infer([prepared])``: the network plus formatting),
the two measured in turns round after round so that a change of load hits them alike.

* classification (``resnet50``, ``vits16r224``, ``mobilenetv2`` at 224: ``valid_resize_size`` 256,
  ``valid_crop_size``/``train_crop_size`` 224; fridge_small150 photos): the original's four methods
  with its defaults: ``xrai`` (``n_steps`` 50, ``xrai_fast`` true: 2 x 50 forward and backward passes,
  then Felzenszwalb segments), ``integrated_gradients`` (``n_steps`` 50: 50 passes),
  ``guided_gradcam`` and ``guided_backprop`` (one pass each); ``xrai`` with ``xrai_fast`` false for one
  model (``--xrai-full``).
* detection (``fasterrcnn_resnet18_fpn`` at ``min_size`` 480 / ``max_size`` 640, ``yolov5`` small at
  ``img_size`` 640; BCCD's 640x480 photos): ``d_rise`` with ``--num-masks`` masks (100 by default, the
  number is in the table) and ``max_boxes`` 3. D-RISE runs the detector once per mask (masked images go
  through the engine 8 at a time), so its cost is linear in ``num_masks``: the table gives the cost per
  mask and the implied cost of the default 1000 masks (10x the 100-mask figure).
* ``--multilabel``: the first classifier also packaged as a multi-label model of 4 labels, explained with
  ``confidence_score_threshold_multilabel`` 0, so every label is explained: the cost of one image is the
  single-label cost times the labels explained.

Each (model, device, method) gets a fresh ``Explainer``: its first call is a warm-up, reported on its own
as "first call" (the first explanation builds the explainer's copy of the network, and imports Captum or
``saliency``), and excluded from the median of the ``--repeats`` calls that follow. The plain forward is
timed ``--forward-repeats`` times in every round (median of all). Ratios are to that forward. Seconds are
per image; a multi-label row is per image with all its labels.

    python benchmarks/explain_latency.py [--models resnet50,vits16r224,mobilenetv2,fasterrcnn_resnet18_fpn,yolov5]
        [--methods xrai,integrated_gradients,guided_gradcam,guided_backprop] [--repeats 3] [--n-steps 50]
        [--num-masks 100] [--xrai-full mobilenetv2|none] [--multilabel] [--devices cpu,cuda] [--budget-s 120]
        [--json FILE]
    python benchmarks/explain_latency.py --quick      # tiny sizes and steps: a smoke run of every path

How long: on 2 shared CPU cores the defaults take about half an hour (fasterrcnn's forward alone is ~3 s
there, so its 100-mask D-RISE ~5 min a call); what fits in about 5 minutes there keeps every model and
method at reduced steps and masks (the per-pass and per-mask columns scale them back):

    python benchmarks/explain_latency.py --n-steps 25 --num-masks 8 --repeats 1 --forward-repeats 3 --photos 2

On a 16-core machine with an H200 the defaults took 134 s with ``--devices cuda --multilabel`` and 248 s
with ``--devices cpu --budget-s 20``.

On the CPU and, when ``torch.cuda.is_available()``, on the GPU too (settings layer ``{"device": "cuda"}``;
the table's device column). ``--budget-s`` caps the timed rounds of one (model, device): no new round
starts once it is spent (at least one timed round always runs; column n says how many did).

Random-init models of the real architectures are packaged (``tests/serve_testdata.make_package``): the
time does not depend on the weights' values. A random-init detector may answer no box at its trained
``box_score_thresh`` (yolov5's random objectness is near 0.006), which leaves D-RISE nothing to explain;
then the threshold is lowered to just under the 10th best score on the first photo (printed), and
the plain forward is timed with the same setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRIDGE = ROOT.parent / "shared" / "data" / "fridge_small150"
BCCD = ROOT.parent / "shared" / "data" / "bccd" / "JPEGImages"
FRIDGE_CLASSES = ("can", "carton", "milk_bottle", "water_bottle")
BCCD_CLASSES = ("Platelets", "RBC", "WBC")
CLASSIFIERS = ("resnet50", "vits16r224", "mobilenetv2")
DETECTORS = ("fasterrcnn_resnet18_fpn", "yolov5")

# The server sleeps idle OpenMP threads (see cmd_serve), and explanations run inside it; the same
# policy here, set before torch is imported (as benchmarks/serve_latency.py does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def package_for(root: Path, model_name: str, args, multilabel: bool = False) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from serve_testdata import make_package

    from automl_vision.spec.tasks import ImageTask, YOLO_MODELS

    if model_name in DETECTORS or model_name in YOLO_MODELS or "rcnn" in model_name or "retinanet" in model_name:
        given = ({"img_size": args.img_size, "model_size": "small"} if model_name in YOLO_MODELS
                 else {"min_size": args.min_size, "max_size": args.max_size})
        return make_package(root, ImageTask.IMAGE_OBJECT_DETECTION, model_name, classes=BCCD_CLASSES, **given)
    task = ImageTask.IMAGE_CLASSIFICATION_MULTILABEL if multilabel else ImageTask.IMAGE_CLASSIFICATION
    return make_package(root, task, model_name, classes=FRIDGE_CLASSES, train_crop_size=args.crop,
                        valid_crop_size=args.crop, valid_resize_size=max(args.crop, round(args.crop * 256 / 224)))


def method_configs(model_name: str, is_classifier: bool, args, multilabel: bool) -> list[tuple[str, dict]]:
    """(label, xai_parameters) of every method to time on this model."""
    if not is_classifier:
        return [(f"d_rise num_masks={args.num_masks} max_boxes={args.max_boxes}",
                 {"xai_algorithm": "d_rise", "num_masks": args.num_masks, "max_boxes": args.max_boxes})]
    extra = {"confidence_score_threshold_multilabel": 0.0} if multilabel else {}
    out = []
    for method in args.methods:
        if method == "xrai":
            out.append((f"xrai n_steps={args.n_steps} fast", {"xai_algorithm": "xrai", "n_steps": args.n_steps,
                                                              "xrai_fast": True, **extra}))
            if model_name in args.xrai_full and not multilabel:
                out.append((f"xrai n_steps={args.n_steps} full", {"xai_algorithm": "xrai", "n_steps": args.n_steps,
                                                                  "xrai_fast": False}))
        elif method == "integrated_gradients":
            out.append((f"integrated_gradients n_steps={args.n_steps}",
                        {"xai_algorithm": "integrated_gradients", "n_steps": args.n_steps,
                         "approximation_method": "riemann_middle", **extra}))
        else:
            out.append((method, {"xai_algorithm": method, **extra}))
    return out


def detector_threshold(pkg, device: str, prepared, wanted: float | None, max_boxes: int):
    """The engine to time and its ``box_score_thresh`` (see the module docstring)."""
    from automl_vision.serving.engine import load_engine

    base = {"runtime": "pytorch", "device": device}
    if wanted is not None:
        engine = load_engine(pkg, pkg.settings(("bench", {**base, "box_score_thresh": wanted})))
        return engine, wanted, "given"
    engine = load_engine(pkg, pkg.settings(("bench", base)))
    trained = engine.settings["box_score_thresh"]
    if len(engine.infer([prepared])[0]["boxes"]) >= max_boxes:
        return engine, trained, "trained"
    everything = load_engine(pkg, pkg.settings(("bench", {**base, "box_score_thresh": 0.0})))
    scores = sorted((b["score"] for b in everything.infer([prepared])[0]["boxes"]), reverse=True)
    if not scores:
        return engine, trained, "trained (no box even at 0)"
    thresh = round(scores[min(9, len(scores) - 1)] * 0.99, 6)
    engine = load_engine(pkg, pkg.settings(("bench", {**base, "box_score_thresh": thresh})))
    return engine, thresh, f"lowered from {trained}"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure(model_name: str, pkg, device: str, photos, args, multilabel: bool) -> dict:
    """Forward and every method of one (model, device), in turns; returns the figures."""
    from automl_vision.serving.engine import load_engine
    from automl_vision.serving.explain import Explainer

    is_classifier = pkg.task.is_classification
    note = ""
    if is_classifier:
        engine = load_engine(pkg, pkg.settings(("bench", {"runtime": "pytorch", "device": device})))
        prepared = [engine.preparer(im) for im in photos]
    else:
        probe = load_engine(pkg, pkg.settings(("bench", {"runtime": "pytorch", "device": "cpu"})))
        first = probe.preparer(photos[0])
        engine, thresh, how = detector_threshold(pkg, device, first, args.box_score_thresh, args.max_boxes)
        prepared = [engine.preparer(im) for im in photos]
        note = f"box_score_thresh {thresh} ({how})"
    configs = method_configs(model_name, is_classifier, args, multilabel)

    # The explainer's network copy, built once on its own (every method's first call below builds its own).
    copy_s = None
    if is_classifier:
        t0 = time.perf_counter()
        Explainer(engine).classifier()
        sync(device)
        copy_s = time.perf_counter() - t0

    forward: list[float] = []
    first: dict = {}
    times: dict = {label: [] for label, _ in configs}
    errors: dict = {}
    explained: dict = {}  # label -> how many classes / boxes the last call explained
    answers = [engine.infer([p])[0] for p in prepared]
    if not is_classifier:
        boxes = [len(a["boxes"]) for a in answers]
        note += f"; boxes per photo {min(boxes)}-{max(boxes)}"
        if not min(boxes):
            note += " (a photo with no box: D-RISE has nothing to explain on it)"
    explainers = {label: Explainer(engine) for label, _ in configs}
    params = {label: explainers[label].parse(value) for label, value in configs}

    def time_forward(i: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        engine.infer([prepared[i % len(prepared)]])
        sync(device)
        return time.perf_counter() - t0

    def time_method(label: str, i: int):
        if label in errors:
            return None
        k = i % len(prepared)
        sync(device)
        t0 = time.perf_counter()
        try:
            out = explainers[label].explain(prepared[k], answers[k], params[label])
        except Exception as e:  # reported, not patched: the run goes on with the other methods
            errors[label] = f"{type(e).__name__}: {e}"
            errors[label + " traceback"] = traceback.format_exc()
            return None
        sync(device)
        elapsed = time.perf_counter() - t0
        if is_classifier:
            v = out.get("visualizations", out.get("attributions"))
            explained[label] = len(v) if multilabel and isinstance(v, list) else 1
        else:
            explained[label] = sum(1 for b in out["boxes"] if "visualizations" in b or "attributions" in b)
        return elapsed

    forward_first = time_forward(0)
    for label, _ in configs:  # warm-up round: each method's first call
        first[label] = time_method(label, 0)
    forward.extend(time_forward(i) for i in range(args.forward_repeats))
    t_start = time.monotonic()
    done = 0
    for r in range(args.repeats):
        if r and args.budget_s is not None and time.monotonic() - t_start > args.budget_s:
            break
        order = configs if r % 2 == 0 else configs[::-1]
        forward.extend(time_forward(r + 1 + i) for i in range(args.forward_repeats))
        for label, _ in order:
            elapsed = time_method(label, r + 1)
            if elapsed is not None:
                times[label].append(elapsed)
        done += 1
        print(f"  {model_name}{' (multi-label)' if multilabel else ''} on {device}: round {r + 1}/{args.repeats} "
              f"done, load average {os.getloadavg()[0]:.1f}", flush=True)
    fwd = statistics.median(forward)
    rows = []
    for label, value in configs:
        p = params[label]
        med = statistics.median(times[label]) if times[label] else None
        row = {"method": label, "algorithm": p.algorithm, "parameters": p.to_json(), "n": len(times[label]),
               "first_s": first[label], "median_s": med, "ratio": med / fwd if med else None,
               "passes": p.passes(), "explained": explained.get(label), "error": errors.get(label),
               "traceback": errors.get(label + " traceback")}
        if p.algorithm == "d_rise" and med is not None:
            row["per_mask_s"] = med / p.num_masks
            row["implied_1000_masks_s"] = med / p.num_masks * 1000
        rows.append(row)
    return {"model": model_name + (" multi-label" if multilabel else ""), "device": device,
            "device_name": device_label(device), "forward_s": fwd, "forward_first_s": forward_first,
            "forward_n": len(forward), "copy_s": copy_s, "rounds": done, "note": note, "rows": rows}


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def fmt_s(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def print_table(results: list[dict]) -> None:
    print("\nseconds per image; median of n calls after the first; x forward: the median over the median of the "
          "plain forward (engine.infer of one image) timed in the same rounds")
    head = (f"{'model':<26}{'device':<7}{'method (parameters)':<52}{'passes':>7}{'n':>3}{'first call':>11}"
            f"{'s/image':>10}{'x forward':>11}{'x fwd/pass':>11}")
    print(head)
    print("-" * len(head))
    for res in results:
        print(f"{res['model']:<26}{res['device']:<7}{'forward (engine.infer, 1 image)':<52}{1:>7}"
              f"{res['forward_n']:>3}{fmt_s(res['forward_first_s']):>11}{fmt_s(res['forward_s']):>10}"
              f"{1.0:>11.2f}{1.0:>11.2f}")
        for row in res["rows"]:
            label = row["method"]
            if row["explained"] and row["explained"] > 1:
                label += f" [{row['explained']} {'boxes' if row['algorithm'] == 'd_rise' else 'labels'}]"
            if row["error"]:
                print(f"{'':<26}{'':<7}{label:<52}{row['passes']:>7}{row['n']:>3}  FAILED: "
                      f"{row['error'].splitlines()[0][:160]}")
                continue
            # a classifier's passes are per explained label; d_rise's masks serve all its boxes at once
            calls = row["passes"] * ((row["explained"] or 1) if row["algorithm"] != "d_rise" else 1)
            per_pass = row["ratio"] / calls if row["ratio"] else None
            print(f"{'':<26}{'':<7}{label:<52}{row['passes']:>7}{row['n']:>3}{fmt_s(row['first_s']):>11}"
                  f"{fmt_s(row['median_s']):>10}{row['ratio'] if row['ratio'] is not None else float('nan'):>11.1f}"
                  f"{per_pass if per_pass is not None else float('nan'):>11.2f}")
            if row.get("per_mask_s") is not None:
                print(f"{'':<35}d_rise per mask {row['per_mask_s'] * 1e3:.1f} ms "
                      f"({row['per_mask_s'] / res['forward_s']:.2f}x forward); linear in num_masks, so the "
                      f"default 1000 masks ~ {row['implied_1000_masks_s']:.0f} s per image")
    print()
    for res in results:
        extra = [f"forward {res['forward_s'] * 1e3:.1f} ms", f"{res['rounds']} timed rounds"]
        if res["copy_s"] is not None:
            extra.append(f"explainer's network copy built in {res['copy_s']:.2f} s")
        if res["note"]:
            extra.append(res["note"])
        print(f"{res['model']} on {res['device']} ({res['device_name']}): " + "; ".join(extra))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help=f"comma-separated (default {','.join(CLASSIFIERS + DETECTORS)})")
    ap.add_argument("--methods", help="classification methods (default all four: xrai,integrated_gradients,"
                                      "guided_gradcam,guided_backprop)")
    ap.add_argument("--repeats", type=int, help="timed calls of each method after its first (default 3)")
    ap.add_argument("--forward-repeats", type=int, help="plain forwards timed per round (default 5)")
    ap.add_argument("--n-steps", type=int, help="xrai and integrated_gradients n_steps (default 50, the original's)")
    ap.add_argument("--num-masks", type=int, help="d_rise num_masks (default 100; the method's default is 1000)")
    ap.add_argument("--max-boxes", type=int, default=3, help="d_rise max_boxes (default 3, the method's)")
    ap.add_argument("--xrai-full", help="models also timed with xrai_fast false (default mobilenetv2; 'none')")
    ap.add_argument("--multilabel", action="store_true",
                    help="also the first classifier as a 4-label multi-label model, every label explained")
    ap.add_argument("--devices", help="comma-separated (default cpu, and cuda when torch.cuda.is_available())")
    ap.add_argument("--crop", type=int, help="classification crop (default 224; resize 256/224 of it)")
    ap.add_argument("--min-size", type=int, help="torchvision detectors' min_size (default 480)")
    ap.add_argument("--max-size", type=int, help="torchvision detectors' max_size (default 640)")
    ap.add_argument("--img-size", type=int, help="yolov5 img_size (default 640)")
    ap.add_argument("--box-score-thresh", type=float,
                    help="detectors' box_score_thresh (default: the trained one, lowered when it finds no box)")
    ap.add_argument("--photos", type=int, default=4, help="photos taken in turns (default 4)")
    ap.add_argument("--fridge", type=Path, default=FRIDGE, help=f"classification photos (default {FRIDGE})")
    ap.add_argument("--bccd", type=Path, default=BCCD, help=f"detection photos (default {BCCD})")
    ap.add_argument("--budget-s", type=float, help="no new timed round of a (model, device) after this many seconds")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: mobilenetv2 at 64, fasterrcnn at 128/160, yolov5 at 128, n_steps 4, "
                         "8 masks, 1 repeat (flags given still win)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    quick = args.quick
    defaults = {"models": "mobilenetv2,fasterrcnn_resnet18_fpn,yolov5" if quick else ",".join(CLASSIFIERS + DETECTORS),
                "methods": "xrai,integrated_gradients,guided_gradcam,guided_backprop",
                "repeats": 1 if quick else 3, "forward_repeats": 2 if quick else 5, "n_steps": 4 if quick else 50,
                "num_masks": 8 if quick else 100, "xrai_full": "mobilenetv2", "crop": 64 if quick else 224,
                "min_size": 128 if quick else 480, "max_size": 160 if quick else 640, "img_size": 128 if quick else 640}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m for m in args.models.split(",") if m]
    args.methods = [m for m in args.methods.split(",") if m]
    args.xrai_full = [] if args.xrai_full == "none" else args.xrai_full.split(",")

    import torch
    from PIL import Image

    from automl_vision.serving.package import load_package

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    fridge = sorted(args.fridge.glob("*.jpg"))[:args.photos]
    bccd = sorted(args.bccd.glob("*.jpg"))[:args.photos]
    cores = len(os.sched_getaffinity(0))
    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "no GPU"
    print(f"machine: {cores} CPU cores ({cpu_name()}), load average {os.getloadavg()[0]:.1f}, OMP_WAIT_POLICY "
          f"{os.environ['OMP_WAIT_POLICY']}, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}; "
          f"devices timed: {', '.join(devices)}")
    print(f"settings: repeats {args.repeats} (+1 first call), {args.forward_repeats} forwards per round, n_steps "
          f"{args.n_steps}, num_masks {args.num_masks}, classification crop {args.crop}, detection min/max_size "
          f"{args.min_size}/{args.max_size}, yolov5 img_size {args.img_size}, {args.photos} photos in turns"
          + (f", budget {args.budget_s:.0f} s per model and device" if args.budget_s else ""), flush=True)
    t_all = time.monotonic()
    results = []
    jobs = [(m, False) for m in args.models]
    if args.multilabel:
        first_cls = next((m for m in args.models if m not in DETECTORS), None)
        if first_cls:
            jobs.append((first_cls, True))
    for model_name, multilabel in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            try:
                pkg = load_package(package_for(Path(tmp), model_name, args, multilabel))
            except Exception as e:
                print(f"{model_name}: could not be packaged: {type(e).__name__}: {e}", flush=True)
                continue
            photos = [Image.open(p).convert("RGB") for p in (fridge if pkg.task.is_classification else bccd)]
            if not photos:
                raise SystemExit(f"no photos in {args.fridge if pkg.task.is_classification else args.bccd}")
            print(f"{model_name}{' (multi-label)' if multilabel else ''}: packaged in {time.monotonic() - t0:.1f} s",
                  flush=True)
            for device in devices:
                results.append(measure(model_name, pkg, device, photos, args, multilabel))
    print_table(results)
    failed = [(res, row) for res in results for row in res["rows"] if row["error"]]
    for res, row in failed:
        print(f"\n{res['model']} on {res['device']}, {row['method']} failed:\n{row['traceback']}")
    print(f"whole run {time.monotonic() - t_all:.0f} s, load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        for res in results:
            for row in res["rows"]:
                row.pop("traceback", None)
        Path(args.json).write_text(json.dumps({"cores": cores, "torch_threads": torch.get_num_threads(),
                                               "cpu": cpu_name(), "gpu": gpu, "results": results}, indent=2))


if __name__ == "__main__":
    main()
