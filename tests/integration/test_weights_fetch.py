"""Pretrained weights fetched from their sources, against a real HTTP server on 127.0.0.1 standing in
for download.pytorch.org, the Hugging Face Hub and ultralytics' release assets: first fetch, cached
reuse, corrupted and interrupted downloads, two processes at once, mirrors (folder, https, s3://),
offline mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from automl_vision.cli import main
from automl_vision.errors import ConfigError
from automl_vision.models import catalogue
from automl_vision.models.registry import build_model
from automl_vision.models.weights import MANIFEST, WeightsSource, WeightsUnavailable, locate
from automl_vision.spec.tasks import ImageTask
from weights_testdata import WeightsServer, publish_torchvision, s3, torch_bytes  # noqa: F401 (s3: a fixture)

MC = ImageTask.IMAGE_CLASSIFICATION
R18 = torchvision.models.ResNet18_Weights.DEFAULT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server():
    s = WeightsServer()
    yield s
    s.close()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """Empty caches under tmp_path, every source on the local server."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("AUTOML_VISION_TORCHVISION_URL", f"{server.url}/tv")
    monkeypatch.setenv("AUTOML_VISION_HF_URL", f"{server.url}/hf")
    monkeypatch.setenv("AUTOML_VISION_ULTRALYTICS_URL", f"{server.url}/ua")
    for var in ("AUTOML_VISION_OFFLINE", "AUTOML_VISION_WEIGHTS", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    server.faults.clear()
    return tmp_path


def _tiny(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return torch_bytes({"weight": torch.randn(16, 16, generator=g), "bias": torch.randn(16, generator=g)})


def _serve_resnet18(server, monkeypatch, seed: int) -> tuple[str, bytes]:
    data = _tiny(seed)
    name = publish_torchvision(monkeypatch, R18, data, f"resnet18-test{seed}")
    server.files[f"/tv/{name}"] = data
    return name, data


def _checkpoints(root: Path) -> Path:
    return root / "torch" / "hub" / "checkpoints"


def test_first_fetch_loads_the_model_and_second_use_reads_the_cache(server, env, monkeypatch, caplog):
    caplog.set_level("INFO", logger="automl_vision.models.weights")
    torch.manual_seed(7)
    source = torchvision.models.mobilenet_v2(weights=None)
    data = torch_bytes(source.state_dict())
    member = torchvision.models.MobileNet_V2_Weights.DEFAULT
    name = publish_torchvision(monkeypatch, member, data, "mobilenet_v2-test")
    server.files[f"/tv/{name}"] = data
    model = build_model("mobilenetv2", MC, 3, pretrained=True)
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert (_checkpoints(env) / name).read_bytes() == data
    assert server.gets[f"/tv/{name}"] == 1
    # no terminal here: one line per file instead of a progress bar
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("downloaded")] == \
        [f"downloaded {name}"]
    build_model("mobilenetv2", MC, 3, pretrained=True)
    assert server.gets[f"/tv/{name}"] == 1  # the cached, verified file is used again
    assert sorted(p.name for p in _checkpoints(env).iterdir()) == [name, name + ".lock"]


def test_a_file_failing_its_hash_is_refused_and_nothing_is_left(server, env, monkeypatch):
    name, data = _serve_resnet18(server, monkeypatch, 1)
    server.files[f"/tv/{name}"] = _tiny(99)  # the server sends other bytes than the name's hash says
    with pytest.raises(ConfigError, match=r"fails verification \(sha256 [0-9a-f]{64} does not start with"):
        locate(catalogue.weights_file("resnet18"), None)
    assert not (_checkpoints(env) / name).exists()
    assert [p.name for p in _checkpoints(env).iterdir()] == [name + ".lock"]  # no partial file
    server.files[f"/tv/{name}"] = data
    assert locate(catalogue.weights_file("resnet18"), None).read_bytes() == data


def test_a_corrupted_cached_file_is_deleted_and_fetched_again(server, env, monkeypatch):
    name, data = _serve_resnet18(server, monkeypatch, 2)
    dest = _checkpoints(env) / name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data[:-10] + b"0123456789")
    before = server.gets[f"/tv/{name}"]
    assert locate(catalogue.weights_file("resnet18"), None).read_bytes() == data
    assert server.gets[f"/tv/{name}"] == before + 1


def test_an_interrupted_download_leaves_no_half_file(server, env, monkeypatch):
    name, data = _serve_resnet18(server, monkeypatch, 3)
    server.faults[f"/tv/{name}"] = "cut"
    with pytest.raises(ConfigError, match="nothing kept"):
        locate(catalogue.weights_file("resnet18"), None)
    assert [p.name for p in _checkpoints(env).iterdir()] == [name + ".lock"]
    server.faults.clear()
    assert locate(catalogue.weights_file("resnet18"), None).read_bytes() == data


_FETCH_ONE = """
import sys
from automl_vision.models.weights import WeightsFile, locate
print(locate(WeightsFile("resnet18", sys.argv[1].rsplit("/", 1)[1], sys.argv[1], "torchvision"), None))
assert "torch" not in sys.modules  # a download alone does not import torch
"""


def test_two_processes_fetching_the_same_file_download_it_once(server, env, monkeypatch):
    name, data = _serve_resnet18(server, monkeypatch, 4)
    server.faults[f"/tv/{name}"] = "slow"  # 1.5 s: without the lock the two downloads would overlap
    before = server.gets[f"/tv/{name}"]
    url = f"https://download.pytorch.org/models/{name}"
    run = [sys.executable, "-c", _FETCH_ONE, url]
    procs = [subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {o[0].strip() for o in outs} == {str(_checkpoints(env) / name)}
    assert server.gets[f"/tv/{name}"] == before + 1
    assert (_checkpoints(env) / name).read_bytes() == data


def test_timm_weights_in_the_hugging_face_cache_layout(server, env):
    from huggingface_hub import try_to_load_from_cache
    from safetensors.torch import save

    file = catalogue.weights_file("resnest50")
    data = save({"w": torch.arange(12.0)})
    server.hf[f"{file.hub_id}/model.safetensors"] = data
    path = locate(file, None)
    assert path.read_bytes() == data
    # huggingface_hub itself finds it: the same layout (blobs/<sha256>, snapshots/<commit>, refs/main)
    assert try_to_load_from_cache(file.hub_id, "model.safetensors", cache_dir=str(env / "hf")) == str(path)
    gets = sum(server.gets.values())
    assert locate(file, None) == path and sum(server.gets.values()) == gets


def test_timm_file_not_matching_the_hub_sha256_is_refused(server, env):
    file = catalogue.weights_file("seresnext")
    key = f"{file.hub_id}/model.safetensors"
    server.hf[key] = b"not the file the hub describes" * 100
    server.hf_etags[key] = "0" * 64
    with pytest.raises(ConfigError, match="expected 0000"):
        locate(file, None)
    blobs = env / "hf" / ("models--" + file.hub_id.replace("/", "--")) / "blobs"
    assert [p.name for p in blobs.iterdir()] == ["0" * 64 + ".lock"]


def test_ultralytics_asset_must_be_a_checkpoint(server, env):
    file = catalogue.weights_file("yolov5:small")
    server.files["/ua/yolov5su.pt"] = b"<html>rate limited</html>"
    with pytest.raises(ConfigError, match="not a PyTorch checkpoint"):
        locate(file, None)
    server.files["/ua/yolov5su.pt"] = _tiny(5)
    assert locate(file, None) == _checkpoints(env) / "yolov5su.pt"


def test_offline_without_and_with_a_cached_file(server, env, monkeypatch):
    name, data = _serve_resnet18(server, monkeypatch, 6)
    monkeypatch.setenv("AUTOML_VISION_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as info:
        build_model("resnet18", MC, 2, pretrained=True)
    message = str(info.value)
    for fragment in ("pretrained weights for resnet18 not available", f"expected {_checkpoints(env) / name}",
                     "AUTOML_VISION_OFFLINE", f"https://download.pytorch.org/models/{name}",
                     "automl-vision weights fetch --models resnet18 --to DIR_OR_S3", "pretrained: 0"):
        assert fragment in message
    assert not (env / "torch").exists()  # nothing written
    dest = _checkpoints(env) / name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    gets = sum(server.gets.values())
    assert locate(catalogue.weights_file("resnet18"), None) == dest
    assert sum(server.gets.values()) == gets


def test_unreachable_source_is_a_clear_error_and_writes_nothing(env, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AUTOML_VISION_HF_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsUnavailable) as info:
        locate(catalogue.weights_file("vitb16r224"), None)
    message = str(info.value)
    assert "pretrained weights for vitb16r224 not available" in message and "cannot reach 127.0.0.1" in message
    assert "automl-vision weights fetch --models vitb16r224" in message
    assert not (env / "hf").exists()


# --- mirrors -------------------------------------------------------------------------------------

def test_fetch_to_a_folder_then_train_from_it_offline(server, env, monkeypatch, capsys):
    name, data = _serve_resnet18(server, monkeypatch, 8)
    from safetensors.torch import save

    timm_file = catalogue.weights_file("resnest101")
    timm_data = save({"w": torch.ones(3)})
    server.hf[f"{timm_file.hub_id}/model.safetensors"] = timm_data
    mirror = env / "mirror"
    assert main(["weights", "fetch", "--models", "resnet18,resnest101", "--to", str(mirror)]) == 0
    manifest = json.loads((mirror / MANIFEST).read_text())
    entries = {e["file"]: e for e in manifest["models"]}
    assert set(entries) == {name, timm_file.relpath}
    assert entries[name]["size"] == len(data) and entries[name]["code_licence"] == "BSD-3-Clause"
    assert entries[timm_file.relpath]["weights_licence"] == "apache-2.0"
    assert (mirror / name).read_bytes() == data and (mirror / timm_file.relpath).read_bytes() == timm_data
    monkeypatch.setenv("AUTOML_VISION_OFFLINE", "1")
    gets = sum(server.gets.values())
    assert locate(catalogue.weights_file("resnet18"), WeightsSource(str(mirror))) == mirror / name
    assert locate(timm_file, WeightsSource(str(mirror))) == mirror / timm_file.relpath
    assert sum(server.gets.values()) == gets
    (mirror / timm_file.relpath).write_bytes(timm_data[:-1] + b"!")  # the manifest's sha256 catches it
    with pytest.raises(ConfigError, match="fails verification"):
        locate(timm_file, WeightsSource(str(mirror)))
    capsys.readouterr()
    assert main(["weights", "list", "--models", "resnet18,resnet34", "--weights", str(mirror)]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "MISSING" in out
    assert f"automl-vision weights fetch --models resnet34 --to {mirror}" in out
    job = env / "job.yaml"
    job.write_text("task: image_object_detection\ntraining_data: t.jsonl\nsearch_space:\n"
                   "  - model_name: {type: choice, values: [yolov5]}\n"
                   "    model_size: {type: choice, values: [small]}\n"
                   "  - model_name: {type: choice, values: [fasterrcnn_resnet18_fpn]}\n")
    assert main(["weights", "list", "--job", str(job), "--weights", str(mirror), "--json"]) == 0
    rows = {r["model_name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["yolov5 (model_size small)"]["present"] is False
    assert rows["fasterrcnn_resnet18_fpn"]["present"] is True  # the same file as resnet18's
    assert rows["yolov5 (model_size small)"]["code_licence"].startswith("AGPL-3.0")


def test_https_mirror_checks_the_manifest(server, env, monkeypatch):
    file = catalogue.weights_file("vits16r224")
    data = b"x" * 1000
    server.files[f"/mirror/{file.relpath}"] = data
    server.files[f"/mirror/{MANIFEST}"] = json.dumps(
        {"models": [{"file": file.relpath, "sha256": "f" * 64, "size": len(data)}]}).encode()
    where = WeightsSource(f"{server.url}/mirror", cache_dir=str(env / "cache"))
    with pytest.raises(ConfigError, match="fails verification"):
        locate(file, where)
    import hashlib

    server.files[f"/mirror/{MANIFEST}"] = json.dumps(
        {"models": [{"file": file.relpath, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]}).encode()
    path = locate(file, where)
    assert path.read_bytes() == data and str(path).startswith(str(env / "cache"))


def test_fetch_to_s3_and_read_from_it(server, env, monkeypatch, s3):
    client, endpoint = s3
    name, data = _serve_resnet18(server, monkeypatch, 9)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert main(["weights", "fetch", "--models", "resnet18", "--to", "s3://models/zoo"]) == 0
    manifest = json.loads(client.get_object("models", f"zoo/{MANIFEST}").read())
    assert [e["file"] for e in manifest["models"]] == [name]
    monkeypatch.setenv("AUTOML_VISION_OFFLINE", "1")
    path = locate(catalogue.weights_file("resnet18"), WeightsSource("s3://models/zoo", endpoint, str(env / "c")))
    assert path.read_bytes() == data


