"""Serving speed, measured side by side in one run on this machine:

1. the raw model forward in-process (engine, no HTTP, batch 1 and batch 32): the floor;
2. ``automl-vision serve`` answering the original product's JSON request (one fridge photo per
   request) with 1, 8 and 32 concurrent clients: latency p50/p99, throughput, and their ratios
   to the raw forward;
3. the batching gain: the same server with micro-batching on (max_batch_size 8 or 32) and off (1);
4. ONNX Runtime against eager PyTorch on the same package, in-process, batch 1 and batch 8
   (goal: ONNX latency at most 0.8x PyTorch's).

    python benchmarks/serve_latency.py [--model-name resnet18] [--rounds 3] [--requests 32] [--clients 1,8,32]

With ``--detectors``, instead: each detector (``fasterrcnn_resnet18_fpn,maskrcnn_resnet18_fpn,...``)
packaged with its ONNX export (gated on synthetic images: the weights are random), then the engine's
whole prediction (resize, network, NMS, masks) per image with ONNX Runtime against PyTorch, in-process,
at batch 1, 8 and 32, on BCCD's 640x480 photos (goal: ONNX at most 0.8x PyTorch's time).

    python benchmarks/serve_latency.py --detectors fasterrcnn_resnet18_fpn,retinanet_resnet50_fpn,yolov5 \
        [--min-size 480] [--batches 1,8,32]

A random-init model of the real architecture is packaged (what is timed does not depend on the
weights' values); requests are the fridge_small150 photos, base64 in the original's request body.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

FRIDGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fridge_small150"
BCCD = FRIDGE.parent / "bccd" / "JPEGImages"


# `automl-vision serve` sleeps idle OpenMP threads (see cmd_serve); the in-process figures use the
# same policy, set before torch is imported, so both sides are measured alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_package(root: Path, model_name: str, crop: int) -> Path:
    import torch

    from automl_vision.models.registry import build_model
    from automl_vision.serving.export import package_model
    from automl_vision.spec import hyperparameters as hps
    from automl_vision.spec.tasks import ImageTask
    from automl_vision.training.loop import save_model
    from automl_vision.training.trial import TrialSettings

    task = ImageTask.IMAGE_CLASSIFICATION
    hp = hps.resolve(task, {"model_name": model_name, "pretrained": False, "train_crop_size": crop,
                            "valid_crop_size": crop, "valid_resize_size": max(crop, round(crop * 256 / 224))})
    classes = ["can", "carton", "milk_bottle", "water_bottle"]
    torch.manual_seed(0)
    model = build_model(model_name, task, len(classes), pretrained=False, image_size=crop).eval()
    settings = TrialSettings(task=task, training_data="-", validation_data=None, hyperparameters=hp,
                             output_dir=str(root / "trial"))
    save_model(model, root / "trial" / "outputs", settings, classes, {"accuracy": 0.0}, 1)
    return package_model(root / "trial" / "outputs", root / "package").path


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --- in-process ------------------------------------------------------------------------------------

def time_forward(engines: dict, batch, repeats: int) -> dict:
    """Median latency of ``repeats`` forward passes of each engine, the engines alternating call by
    call (after one warm-up each), so that both see the same load."""
    for engine in engines.values():
        engine.logits(batch)
    out: dict = {rt: [] for rt in engines}
    names = list(engines)
    for i in range(repeats):
        for rt in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            engines[rt].logits(batch)
            out[rt].append(time.perf_counter() - t0)
    return {rt: statistics.median(v) for rt, v in out.items()}


# --- the server ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, package: Path, settings: dict, log: Path):
        self.port = free_port()
        env = {**os.environ, "AUTOML_VISION_SETTINGS": json.dumps(settings)}
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "automl_vision", "serve", "--model", str(package),
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {log}")
            try:
                if httpx.get(self.url + "/v1/models/model", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"server not ready; see {log}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def load(url: str, bodies: list[bytes], clients: int, requests: int) -> dict:
    """``clients`` threads sending ``requests`` requests in all, each client back to back
    (after one warm-up request each, not counted)."""
    import httpx

    per_client = max(2, -(-requests // clients))
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(k: int):
        with httpx.Client(timeout=600) as c:
            c.post(url, content=bodies[k % len(bodies)], headers={"Content-Type": "application/json"})
            start.wait()
            mine = []
            for j in range(per_client):
                body = bodies[(k + j * clients) % len(bodies)]
                t0 = time.perf_counter()
                r = c.post(url, content=body, headers={"Content-Type": "application/json"})
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    with lock:
                        errors[0] += 1
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "latencies": latencies,
            "throughput": len(latencies) / elapsed}


def build_detector_package(root: Path, model_name: str, min_size: int) -> Path:
    """A random-init detector saved as a trial saves it, packaged with its ONNX export."""
    import torch

    from automl_vision.models.registry import build_model
    from automl_vision.serving.export import package_model
    from automl_vision.spec import hyperparameters as hps
    from automl_vision.spec.tasks import MODEL_TASKS, YOLO_MODELS
    from automl_vision.training.loop import save_model
    from automl_vision.training.trial import TrialSettings

    task = min(MODEL_TASKS[model_name], key=lambda t: t.value)
    yolo = model_name in YOLO_MODELS
    given = {"img_size": min_size, "model_size": "small"} if yolo else {"min_size": min_size,
                                                                         "max_size": round(min_size * 1333 / 800)}
    hp = hps.resolve(task, {"model_name": model_name, "pretrained": False, **given})
    classes = ["Platelets", "RBC", "WBC"]
    torch.manual_seed(0)
    if yolo:
        model = build_model(model_name, task, len(classes), pretrained=False, model_size=hp["model_size"])
    else:
        from automl_vision.models.detection import DetectorSettings

        model = build_model(model_name, task, len(classes), pretrained=False,
                            settings=DetectorSettings.from_hyperparameters(hp))
    settings = TrialSettings(task=task, training_data="-", validation_data=None, hyperparameters=hp,
                             output_dir=str(root / "trial"))
    metric = "mean_average_precision"
    save_model(model.eval(), root / "trial" / "outputs", settings, classes, {metric: 0.0, "per_label": {}}, 1)
    return package_model(root / "trial" / "outputs", root / "package").path


def detection_servers(package: Path, photos: list[Path], args, clients: list[int], tmp: Path) -> list[dict]:
    """``automl-vision serve`` with ONNX Runtime, micro-batching off (max_batch_size 1) and on (8), one BCCD
    photo per request from 1 and more concurrent clients: throughput and p95 against one lone request."""
    bodies = [json.dumps({"input_data": {"columns": ["image"], "data": [base64.b64encode(p.read_bytes()).decode()]}}
                         ).encode() for p in photos]
    out = []
    servers = {mbs: Server(package, {"runtime": "onnx", "max_batch_size": mbs, "max_batch_latency_ms": 20},
                           tmp / f"server-{mbs}.log") for mbs in (1, 8)}
    try:
        for mbs, server in servers.items():
            alone = None
            for n in clients:
                r = load(server.url + "/v1/models/model:predict", bodies, n, max(args.requests, 2 * n))
                p95 = percentile(r["latencies"], 95) * 1e3
                rate = r["throughput"]
                if n == clients[0]:
                    alone = (percentile(r["latencies"], 50) * 1e3, rate)
                out.append({"max_batch_size": mbs, "clients": n, "p95_ms": p95, "req_per_s": rate,
                            "errors": r["errors"]})
                print(f"  server max_batch_size {mbs:>2}, {n:>2} clients: {rate:6.2f} req/s "
                      f"({rate / alone[1]:.2f}x one client's), p95 {p95:7.0f} ms ({p95 / alone[0]:.2f}x one "
                      f"client's p50), errors {r['errors']}")
    finally:
        for server in servers.values():
            server.stop()
    return out


def detection_main(args) -> None:
    import torch
    from PIL import Image

    from automl_vision.serving.engine import load_engine
    from automl_vision.serving.package import have_runtime, load_package

    batches = [int(x) for x in args.batches.split(",")]
    runtimes = ["pytorch", "onnx"] + (["openvino"] if have_runtime("openvino") else [])
    clients = [int(x) for x in args.clients.split(",")]
    photos = sorted(BCCD.glob("*.jpg"))[:max(batches)]
    if len(photos) < max(batches):
        raise SystemExit(f"{BCCD}: {len(photos)} photos, {max(batches)} needed")
    images = [Image.open(p).convert("RGB") for p in photos]
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} CPU cores, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {len(images)} BCCD photos {images[0].width}x{images[0].height}, "
          f"min_size/img_size {args.min_size}")
    figures: dict = {"cores": cores, "min_size": args.min_size, "models": {}}
    for model_name in args.detectors.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            package = build_detector_package(Path(tmp), model_name, args.min_size)
            entry = json.loads((package / "package.json").read_text())["onnx"]
            print(f"\n{model_name}: packaged in {time.monotonic() - t0:.1f} s "
                  f"(export {entry.get('export_seconds')} s); "
                  f"ONNX: {'kept, ' + entry['gate']['reason'] if entry.get('file') else entry.get('reason')}")
            if not entry.get("file"):
                continue
            pkg = load_package(package)
            engines = {rt: load_engine(pkg, pkg.settings(("benchmark", {"runtime": rt, "device": "cpu"})))
                       for rt in runtimes}
            prepared = {rt: [e.preparer(im) for im in images] for rt, e in engines.items()}
            rows = {}
            for n in batches:
                times: dict = {rt: [] for rt in engines}
                for rt, e in engines.items():  # warm-up
                    e.predictions(prepared[rt][:n])
                for i in range(args.rounds):
                    for rt in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
                        t1 = time.perf_counter()
                        engines[rt].predictions(prepared[rt][:n])
                        times[rt].append((time.perf_counter() - t1) / n)
                per = {rt: statistics.median(v) * 1000 for rt, v in times.items()}
                rows[n] = {f"{rt}_ms_per_image": v for rt, v in per.items()}
                print(f"  batch {n:>2}: " + ", ".join(f"{rt} {v:7.1f} ms/image" for rt, v in per.items()) + "; "
                      + ", ".join(f"{rt}/pytorch {per[rt] / per['pytorch']:.2f}x" for rt in runtimes[1:]))
            figures["models"][model_name] = {"export_seconds": entry.get("export_seconds"), "batches": rows,
                                             "server": detection_servers(package, photos, args, clients,
                                                                         Path(tmp))}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", help="comma-separated detector models: time them instead (see above)")
    ap.add_argument("--min-size", type=int, default=480, help="with --detectors: min_size (img_size for yolov5)")
    ap.add_argument("--batches", default="1,8,32", help="with --detectors: batch sizes")
    ap.add_argument("--model-name", default="resnet18")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3,
                    help="every measurement is repeated this many times, the configurations taking turns")
    ap.add_argument("--requests", type=int, default=32, help="requests per server measurement (all clients)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.detectors:
        detection_main(args)
        return
    clients = [int(x) for x in args.clients.split(",")]

    import torch
    from PIL import Image

    from automl_vision.serving.engine import load_engine
    from automl_vision.serving.package import have_runtime, load_package

    photos = sorted(FRIDGE.glob("*.jpg"))[:32]
    if not photos:
        raise SystemExit(f"no photos in {FRIDGE}")
    bodies = [json.dumps({"input_data": {"columns": ["image"], "data": [base64.b64encode(p.read_bytes()).decode()]}}
                         ).encode() for p in photos]
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} CPU cores, load average {os.getloadavg()[0]:.1f}, OMP_WAIT_POLICY "
          f"{os.environ['OMP_WAIT_POLICY']}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    figures: dict = {"model": args.model_name, "crop": args.crop, "cores": cores, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        package = build_package(tmp, args.model_name, args.crop)
        manifest = json.loads((package / "package.json").read_text())["onnx"]
        print(f"packaged {args.model_name} (crop {args.crop}) in {time.monotonic() - t0:.1f} s; ONNX: "
              f"{manifest.get('file') or manifest.get('reason')}")
        runtimes = ["pytorch"] + (["onnx"] + (["openvino"] if have_runtime("openvino") else [])
                                  if manifest.get("file") else [])
        pkg = load_package(package)
        engines = {rt: load_engine(pkg, pkg.settings(("bench", {"runtime": rt}))) for rt in runtimes}
        images = [engines["pytorch"].preparer(Image.open(p).convert("RGB")) for p in photos]
        batches = {bs: torch.stack(images[:bs]) for bs in (1, 8, 32)}
        configs = [("pytorch", 32), ("pytorch", 8), ("pytorch", 1)]
        configs += [("onnx", 8), ("onnx", 1)] if "onnx" in runtimes else []
        servers = {}
        try:
            for runtime, mbs in configs:
                servers[(runtime, mbs)] = Server(package, {"runtime": runtime, "max_batch_size": mbs,
                                                           "max_batch_latency_ms": 5},
                                                 tmp / f"server-{runtime}-{mbs}.log")
            forward: dict = {}
            runs: dict = {}
            for r in range(args.rounds):
                # The raw forward and every server configuration take turns, round after round, so a
                # change of load on this shared machine hits them alike; medians over the rounds.
                for bs, repeats in ((1, 20), (8, 4), (32, 2)):
                    for rt, value in time_forward(engines, batches[bs], repeats).items():
                        forward.setdefault((rt, bs), []).append(value)
                for n in clients:
                    for cfg in configs:
                        runs.setdefault((cfg, n), []).append(
                            load(servers[cfg].url + "/v1/models/model:predict", bodies, n, args.requests))
                print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    med = {k: statistics.median(v) for k, v in forward.items()}
    print("\nraw forward in-process (median latency per batch)")
    print(f"{'runtime':<9}{'batch 1 ms':>12}{'batch 8 ms':>12}{'batch 32 ms':>13}{'images/s @32':>14}")
    for rt in runtimes:
        print(f"{rt:<9}{med[(rt, 1)] * 1e3:>12.1f}{med[(rt, 8)] * 1e3:>12.1f}{med[(rt, 32)] * 1e3:>13.1f}"
              f"{32 / med[(rt, 32)]:>14.1f}")
    for rt in runtimes[1:]:
        print(f"{rt} / eager PyTorch latency: " + ", ".join(
            f"batch {bs} {med[(rt, bs)] / med[('pytorch', bs)]:.2f}x" for bs in (1, 8, 32)) + "  (goal <= 0.8x)")
    figures["forward_ms"] = {f"{rt}_b{bs}": v * 1e3 for (rt, bs), v in med.items()}
    raw_ms = med[("pytorch", 1)] * 1e3
    raw_tput = max(bs / med[("pytorch", bs)] for bs in (1, 8, 32))
    print(f"\nserver, original JSON request, one fridge photo per request ({args.requests} requests x "
          f"{args.rounds} rounds per row); ratios to the raw PyTorch forward: batch-1 latency {raw_ms:.1f} ms, "
          f"best throughput {raw_tput:.1f} images/s")
    print(f"{'runtime':<9}{'batch':>6}{'clients':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>7}"
          f"{'p50/raw':>9}{'p99/raw':>9}{'req/s / raw':>12}")
    rows = []
    for (cfg, n), rs in runs.items():
        lat = [x for r in rs for x in r["latencies"]]
        row = {"runtime": cfg[0], "max_batch_size": cfg[1], "clients": n, "p50_ms": percentile(lat, 50) * 1e3,
               "p99_ms": percentile(lat, 99) * 1e3, "throughput": statistics.median(r["throughput"] for r in rs),
               "errors": sum(r["errors"] for r in rs)}
        rows.append(row)
    rows.sort(key=lambda r: (configs.index((r["runtime"], r["max_batch_size"])), r["clients"]))
    for r in rows:
        print(f"{r['runtime']:<9}{r['max_batch_size']:>6}{r['clients']:>8}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['throughput']:>8.1f}{r['errors']:>7}{r['p50_ms'] / raw_ms:>9.2f}{r['p99_ms'] / raw_ms:>9.2f}"
              f"{r['throughput'] / raw_tput:>12.2f}")
    def row(runtime, mbs, n):
        return next((r for r in rows if (r["runtime"], r["max_batch_size"], r["clients"]) == (runtime, mbs, n)), None)

    for runtime, sizes in (("pytorch", (8, 32)), ("onnx", (8,))):
        for mbs in sizes:
            if row(runtime, mbs, clients[0]) is None:
                continue
            print(f"\nbatching gain (server throughput, max_batch_size {mbs} / 1, {runtime}):")
            for n in clients:
                on, off = row(runtime, mbs, n), row(runtime, 1, n)
                print(f"  {n:>2} clients: {on['throughput'] / off['throughput']:.2f}x  (p50 {on['p50_ms']:.0f} vs "
                      f"{off['p50_ms']:.0f} ms, p99 {on['p99_ms']:.0f} vs {off['p99_ms']:.0f} ms)")
    figures["server"] = rows
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
