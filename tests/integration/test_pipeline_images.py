"""What can be checked of images/ without a Docker engine: the wheel the Dockerfiles install builds and
holds the package and its command; the commands the Dockerfiles run exist and run; every version is
pinned; the images run as a non-root user with group-writable folders; the tags match the components'."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from automl_vision import __version__
from automl_vision.spec.cluster import cpu_image, cuda_image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "images" / "cpu" / "Dockerfile", "gpu": ROOT / "images" / "gpu" / "Dockerfile"}
BIN = Path(sys.executable).parent
PIN_FILES = {"cpu": "requirements.txt", "gpu": "requirements-gpu.txt"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "--wheel-dir", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    (path,) = out.glob("automl_vision-*.whl")
    return path


def test_the_wheel_holds_the_package_and_its_command(wheel):
    assert wheel.name.startswith(f"automl_vision-{__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("automl_vision/cli/__init__.py", "automl_vision/pipeline/components.py", "automl_vision/pipeline/local.py",
                   "automl_vision/sweep/local.py", "automl_vision/serving/server.py"):
        assert module in names, module
    assert not any(n.startswith(("tests/", "components/", "pipelines/", "manifests/", "images/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "automl-vision = automl_vision.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "Provides-Extra: katib" in zipfile.ZipFile(wheel).read(meta).decode()


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_the_commands_the_dockerfile_runs_exist_and_run(kind):
    steps = instructions(DOCKERFILES[kind])
    checks = [args for word, args in steps if word == "RUN" and "automl-vision --version" in args]
    assert len(checks) == 1, "the image checks its entrypoints once it is built"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run(["sh", "-c", checks[0]], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"automl-vision {__version__}"
    (cmd,) = [args for word, args in steps if word == "CMD"]

    p = subprocess.run(json.loads(cmd), capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and "run" in p.stdout and "compile" in p.stdout


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_pinned_base_non_root_user_and_group_writable_folders(kind):
    steps = instructions(DOCKERFILES[kind])
    for word, args in steps:
        if word == "FROM":
            image = args.split()[0]
            assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"unpinned base image {image}"
        if word == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    text = DOCKERFILES[kind].read_text()
    assert "chmod -R g+rwX" in text and "--gid 0" in text
    # the pinned dependencies, then the package without dependencies (tests/unit/test_images.py checks the order)
    assert f"--requirement /tmp/pins/{PIN_FILES[kind]}" in text
    assert "pip install --no-deps /wheels/automl_vision-*.whl" in text


def test_image_tags_are_the_ones_the_components_use():
    assert f"-t {cpu_image()} " in DOCKERFILES["cpu"].read_text() + " "
    assert f"-t {cuda_image()} ." in DOCKERFILES["gpu"].read_text()


@pytest.mark.parametrize("kind", list(PIN_FILES))
def test_every_dependency_is_pinned_within_its_range(kind):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "images" / PIN_FILES[kind]).read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")):
            req = Requirement(line.rstrip(" \\"))
            (spec,) = req.specifier
            assert spec.operator == "==", f"not pinned: {line}"
            pins[canonicalize_name(req.name)] = spec.version
    for text in project["dependencies"] + project["optional-dependencies"]["katib"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in images/{PIN_FILES[kind]}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"
    # installed without its dependencies, pinned all the same
    assert "kubeflow-katib==" in (ROOT / "images" / "requirements-katib.txt").read_text()
