"""Write the pinned requirement files the images install, from the environment the tests ran in.

    .venv/bin/python images/pin_requirements.py            # offline: versions from this environment
    .venv/bin/python images/pin_requirements.py --hashes   # also pin every file with sha256 (needs the indexes)

Files written (all next to this script):

requirements.txt
    every run-time dependency of automl-vision (with its Katib extra), pinned to the installed version:
    the CPU image installs it. Lines of CUDA runtime packages end with ``# cuda-runtime`` so an image
    built with CPU-only torch can leave them out.
requirements-gpu.txt
    the same pins with torch and torchvision taken from PyTorch's CUDA 12.6 wheel index
    (``CUDA_VARIANT``) and every CUDA 13 runtime package of the PyPI build removed: the GPU image
    installs it. Offline, the CUDA 12 runtime packages are not listed: torch's own metadata pins them
    exactly (cuda-toolkit, cuDNN, NCCL, ...). With ``--hashes`` pip resolves the whole set for the
    image's platform and every package, those included, is written with its version and sha256.
requirements-katib.txt
    the Katib SDK, installed without its dependencies (it pins protobuf<5; kfp and kserve need
    protobuf 6; see pyproject.toml).
requirements-earlystopping.txt
    what the early-stopping service imports (``EARLYSTOPPING_ROOTS``) and their dependencies.

``--hashes`` runs ``pip install --dry-run --report`` for the images' platform (CPython 3.11,
manylinux x86_64) against PyPI and, for the GPU file, PyTorch's index: pip reads the sha256 of each
selected file from the index links (PyPI and download.pytorch.org both publish them) and fetches
only the metadata, not the wheels (a source-only package, such as kfp-server-api, is fetched to read
its metadata). Where an index cannot be reached, that file keeps its offline pins and the script says so
and exits with status 1. pip's own configuration of this machine (extra indexes, find-links,
constraints) is left out of that resolution: the hashes are those of the public indexes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOT_PACKAGE = "automl-vision"
ROOT_EXTRAS = ("katib",)  # the sweep step's Katib backend runs in these images
# Installed beside the package without its dependencies (see pyproject.toml), in its own file.
KATIB_SDK = "kubeflow-katib"
# What automl_vision.earlystopping imports, directly or through the Katib SDK's package
# (kubeflow-training is one of the SDK's requirements that its package imports).
EARLYSTOPPING_ROOTS = ("pydantic", "numpy", "pyyaml", "grpcio", "protobuf", "kubernetes", "kubeflow-training")

# The GPU image's torch build. PyTorch publishes each release for several CUDA versions on
# https://download.pytorch.org/whl/<variant>. cu126 is the one whose kernels include Volta (sm_70)
# and that runs on the 525+ drivers AKS installs; images/README.md has the table and the sources.
# torch 2.14 is the last release with a cu126 build (PyTorch's CUDA support matrix for 2.15 drops it).
CUDA_VARIANT = "cu126"
TORCH_INDEX = f"https://download.pytorch.org/whl/{CUDA_VARIANT}"
TORCH_PACKAGES = ("torch", "torchvision")
# NVML's Python bindings (ultralytics needs them): they call the driver, they carry no CUDA runtime.
NOT_CUDA_RUNTIME = frozenset({"nvidia-ml-py"})
CUDA_RUNTIME_MARK = "# cuda-runtime"

# The images' platform, for --hashes: python:3.11 slim images are Debian bookworm, glibc 2.36. pip
# expands only the old manylinux2014/2010 names to older tags, so every glibc level is listed.
GLIBC_MINOR = 36
PLATFORM_ARGS = (
    *(a for minor in range(GLIBC_MINOR, 4, -1) for a in ("--platform", f"manylinux_2_{minor}_x86_64")),
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64", "--platform", "manylinux1_x86_64",
    "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none")

KEEP_PIP_ENV = ("PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL")  # a mirror of PyPI, if one is set


def is_cuda_runtime(name: str) -> bool:
    """True for the CUDA libraries torch's CUDA wheels pull in (nvidia-*, cuda-toolkit, cuda-bindings...)."""
    key = canonicalize_name(name)
    return key.startswith(("nvidia-", "cuda-")) and key not in NOT_CUDA_RUNTIME


def closure(roots: tuple[str, ...], extras: tuple[str, ...] = ()) -> dict[str, str]:
    """name -> installed version of ``roots`` and everything they need at run time (markers for this
    Python); ``extras`` are the extras asked of the first root."""
    env = default_environment()
    seen: dict[str, str] = {}
    todo = [(root, extras if i == 0 else ()) for i, root in enumerate(roots)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        seen[canonicalize_name(dist.metadata["Name"])] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted)):
                continue
            if canonicalize_name(req.name) not in seen:
                todo.append((req.name, tuple(req.extras)))
    return dict(sorted(seen.items()))


def with_local(version: str, local: str) -> str:
    """2.14.1 -> 2.14.1+cu126 (an installed 2.14.1+cu130 loses its own label first)."""
    return f"{version.split('+')[0]}+{local}"


def gpu_pins(pins: dict[str, str]) -> dict[str, str]:
    """The CPU pins turned into the GPU image's: no CUDA runtime packages, torch from CUDA_VARIANT."""
    out = {name: version for name, version in pins.items() if not is_cuda_runtime(name)}
    for name in TORCH_PACKAGES:
        out[name] = with_local(pins[name], CUDA_VARIANT)
    return dict(sorted(out.items()))


def render(pins: dict[str, str], hashes: dict[str, str] | None, head: list[str], mark_cuda: bool = False) -> str:
    lines = [f"# {h}" if h else "#" for h in head]
    for name, version in pins.items():
        line = f"{name}=={version}"
        if hashes is not None:
            line += f" \\\n    --hash=sha256:{hashes[name]}"
        elif mark_cuda and is_cuda_runtime(name):
            line += f"  {CUDA_RUNTIME_MARK}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def resolve(requirements: list[str], index_args: tuple[str, ...] = (), no_deps: bool = False,
            constraints: list[str] = ()) -> dict[str, tuple[str, str]]:
    """name -> (version, sha256) of what pip would install on the images' platform; reads the hashes
    from the index links, downloads no wheel. With ``no_deps`` a source-only package is allowed
    (pip refuses sources for a foreign platform unless it resolves no dependencies)."""
    with tempfile.TemporaryDirectory() as tmp:
        req_file, report, pins = Path(tmp) / "in.txt", Path(tmp) / "report.json", Path(tmp) / "pins.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        pins.write_text("\n".join(constraints) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--retries", "1", "--timeout", "30",
               "--report", str(report), "--target", str(Path(tmp) / "t"), *PLATFORM_ARGS, *index_args,
               "-r", str(req_file), "-c", str(pins)]
        cmd += ["--no-deps"] if no_deps else ["--only-binary=:all:"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in KEEP_PIP_ENV}
        done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PIP_CONFIG_FILE": os.devnull})
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
            raise SystemExit(f"pip could not resolve {len(requirements)} requirements: " + " ".join(errors[-2:]))
        out = {}
        for item in json.loads(report.read_text())["install"]:
            info = item["download_info"].get("archive_info", {})
            sha = info.get("hashes", {}).get("sha256") or info.get("hash", "").removeprefix("sha256=")
            if not sha:
                raise SystemExit(f"the index gave no sha256 for {item['download_info']['url']}")
            out[canonicalize_name(item["metadata"]["name"])] = (item["metadata"]["version"], sha)
        return dict(sorted(out.items()))


def resolve_gpu(gpu: dict[str, str]) -> dict[str, tuple[str, str]]:
    """torch and torchvision from PyTorch's index with everything their CUDA build pulls in (the other
    pins held as constraints), then the other pins as they are from PyPI, whose hashes win."""
    specs = [f"{n}=={v}" for n, v in gpu.items()]
    torch = [s for s in specs if s.split("==")[0] in TORCH_PACKAGES]
    rest = [s for s in specs if s not in torch]
    with_torch = resolve(torch, ("--extra-index-url", TORCH_INDEX), constraints=rest)
    return dict(sorted({**with_torch, **resolve(rest, no_deps=True)}.items()))


def pinned(resolved: dict[str, tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    return ({n: v for n, (v, _) in resolved.items()}, {n: h for n, (_, h) in resolved.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hashes", action="store_true",
                        help="resolve every file for the images' platform and pin each package's sha256 "
                             "(needs PyPI and download.pytorch.org)")
    args = parser.parse_args(argv)

    version = metadata.version(ROOT_PACKAGE)
    made = (f"Generated by images/pin_requirements.py from an environment with automl-vision {version} "
            f"installed; Python {sys.version_info.major}.{sys.version_info.minor}.")
    pins = closure((ROOT_PACKAGE,), ROOT_EXTRAS)
    pins.pop(canonicalize_name(ROOT_PACKAGE))
    pins.pop(canonicalize_name(KATIB_SDK), None)
    katib = {canonicalize_name(KATIB_SDK): metadata.version(KATIB_SDK)}
    early = closure(EARLYSTOPPING_ROOTS)
    gpu = gpu_pins(pins)
    gpu_head = [made, f"The GPU image's pins: torch and torchvision built for CUDA {CUDA_VARIANT[2:4]}."
                      f"{CUDA_VARIANT[4:]} from PyTorch's index,",
                "no CUDA 13 package (see images/README.md for why).", ""]
    offline = {
        "requirements.txt": render(pins, None, [made, "Lines marked cuda-runtime are left out by a CPU-only torch build."],
                                   mark_cuda=True),
        "requirements-katib.txt": render(katib, None, [made, "Install with --no-deps (see pyproject.toml)."]),
        "requirements-earlystopping.txt": render(early, None, [made, "The early-stopping service's dependencies."]),
        "requirements-gpu.txt": _with_index(render(gpu, None, gpu_head[:-1] + [
            "The CUDA 12 runtime packages follow torch's own exact pins; run with --hashes where",
            "download.pytorch.org is reachable to list them with versions and sha256.", ""])),
    }
    for name, text in offline.items():
        _write(name, text)
    if not args.hashes:
        return 0
    hashed = {
        "requirements-katib.txt": lambda: render(
            *pinned(resolve([f"{n}=={v}" for n, v in katib.items()], no_deps=True)),
            [made, "Install with --no-deps (see pyproject.toml)."]),
        "requirements-earlystopping.txt": lambda: render(
            *pinned(resolve([f"{n}=={v}" for n, v in early.items()])),
            [made, "The early-stopping service's dependencies, with the sha256 of each wheel."]),
        "requirements-gpu.txt": lambda: _with_index(render(
            *pinned(resolve_gpu(gpu)), gpu_head[:-1] + ["Every package, CUDA 12 runtime included, with its sha256.", ""])),
    }
    failed = []
    for name, make in hashed.items():
        try:
            _write(name, make())
        except SystemExit as err:
            print(f"images/{name} keeps no hashes: {err}", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


def _write(name: str, text: str) -> None:
    (HERE / name).write_text(text)
    print(f"wrote images/{name}")


def _with_index(body: str) -> str:
    """Put the torch index after the header comments: pip reads index options from a requirements file."""
    lines = body.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return "".join(lines[:at] + [f"--extra-index-url {TORCH_INDEX}\n"] + lines[at:])


if __name__ == "__main__":
    sys.exit(main())
