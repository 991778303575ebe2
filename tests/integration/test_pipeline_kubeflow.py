"""``automl-vision run --kubeflow URL`` and ``compile`` against a real HTTP server on 127.0.0.1 that
answers the Kubeflow Pipelines v2beta1 API calls kfp.Client makes and records every request: what
would reach a cluster is checked offline, down to the pipeline spec and the cron of a recurring run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from automl_vision.pipeline.pipeline import pipeline_arguments
from automl_vision.spec.job import load_job

API = "/apis/v2beta1"


class PipelinesApi(BaseHTTPRequestHandler):
    """Just enough of the Pipelines API server: healthz, experiments, runs, recurring runs."""

    server: "RecordingServer"

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict, dict]:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.requests.append({"method": self.command, "path": url.path, "query": query, "body": body})
        return url.path, query, body

    def do_GET(self):
        path, query, _ = self._record()
        if path == f"{API}/healthz":
            return self._answer(200, {"multi_user": False})
        if path == f"{API}/experiments":
            wanted = json.loads(query.get("filter", "{}")).get("predicates", [{}])[0].get("stringValue")
            found = [e for e in self.server.experiments if e["display_name"] == wanted]
            return self._answer(200, {"experiments": found, "total_size": len(found)} if found else {})
        self._answer(404, {"error": f"no route {path}"})

    def do_POST(self):
        path, _, body = self._record()
        if path == f"{API}/experiments":
            experiment = {**body, "experiment_id": f"exp-{len(self.server.experiments) + 1}"}
            self.server.experiments.append(experiment)
            return self._answer(200, experiment)
        if path == f"{API}/runs":
            return self._answer(200, {**body, "run_id": "run-1", "state": "PENDING"})
        if path == f"{API}/recurringruns":
            return self._answer(200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED"})
        self._answer(404, {"error": f"no route {path}"})


class RecordingServer(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), PipelinesApi)
        self.requests: list[dict] = []
        self.experiments: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def api_server():
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "task": "image_classification", "name": "flowers", "training_data": "s3://images/flowers/train.jsonl",
        "limits": {"max_trials": 4, "max_concurrent_trials": 2}, "sweep": {"sampling_algorithm": "grid"},
        "search_space": [{"model_name": {"type": "choice", "values": ["resnet18", "mobilenetv2"]},
                          "learning_rate": {"type": "choice", "values": [0.01, 0.001]}}],
        "training_parameters": {"number_of_epochs": 10, "early_stopping": True},
    }))
    return path


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    # HOME: kfp.Client reads (and may write) ~/.config/kfp/context.json; keep the test's own
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _posts(server: RecordingServer, path: str) -> list[dict]:
    return [r["body"] for r in server.requests if r["method"] == "POST" and r["path"] == f"{API}/{path}"]


def _compiled(tmp_path: Path, job_file: Path) -> list[dict]:
    out = tmp_path / "compiled.yaml"
    p = cli("compile", "--out", str(out), home=tmp_path)  # no job: what run --kubeflow sends
    assert p.returncode == 0, p.stderr
    return list(yaml.safe_load_all(out.read_text()))


def test_run_on_kubeflow_sends_the_compiled_pipeline_and_the_job(api_server, job_file, tmp_path):
    p = cli("run", str(job_file), "--kubeflow", api_server.url, home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "run created: run-1 (experiment exp-1)" in p.stdout
    assert f"{api_server.url}/#/runs/details/run-1" in p.stdout

    paths = [(r["method"], r["path"]) for r in api_server.requests]
    assert paths == [("GET", f"{API}/healthz"), ("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"),
                     ("POST", f"{API}/runs")]
    assert _posts(api_server, "experiments") == [{"display_name": "automl-vision", "namespace": ""}]
    (run,) = _posts(api_server, "runs")
    assert run["display_name"] == "flowers" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == json.loads(json.dumps(pipeline_arguments(load_job(job_file))))

    spec, platform = _compiled(tmp_path, job_file)
    assert run["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    # what the API server does first: parse into its message types (unknown fields are refused)
    parsed = json_format.ParseDict(run["pipeline_spec"]["pipeline_spec"], pipeline_spec_pb2.PipelineSpec())
    assert set(parsed.root.dag.tasks) == {"ingest", "preview", "sweep", "evaluate", "report", "package",
                                          "condition-1"}
    assert run["runtime_config"]["parameters"]["backend"] == "local"
    assert run["runtime_config"]["parameters"]["deploy"] is False
    json_format.ParseDict(run["pipeline_spec"]["platform_spec"], pipeline_spec_pb2.PlatformSpec())
    for config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        json_format.ParseDict(config, k8s_pb2.KubernetesExecutorConfig())
    # the parameters fit the pipeline's inputs
    inputs = parsed.root.input_definitions.parameters
    assert set(run["runtime_config"]["parameters"]) <= set(inputs)


def test_schedule_creates_a_recurring_run_in_the_namespace(api_server, job_file, tmp_path):
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--namespace", "team-vision",
            "--schedule", "0 0 2 * * *", "--experiment", "nightly", home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "recurring run created: rr-1" in p.stdout

    assert not any(r["path"].endswith("healthz") for r in api_server.requests)  # a namespace was given
    listing = next(r for r in api_server.requests if r["method"] == "GET")
    assert listing["query"]["namespace"] == "team-vision"
    assert _posts(api_server, "experiments") == [{"display_name": "nightly", "namespace": "team-vision"}]
    (recurring,) = _posts(api_server, "recurringruns")
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert recurring["mode"] == "ENABLE" and recurring["no_catchup"] is True
    assert int(recurring["max_concurrency"]) == 1
    assert recurring["display_name"] == "flowers"
    assert recurring["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "automl-vision"
    assert recurring["runtime_config"]["parameters"]["limits"]["max_trials"] == 4


@pytest.mark.parametrize("args, message", [
    (["--schedule", "0 2 * * *"], "has 5 field(s); a recurring run's cron has 6, seconds first"),
    (["--cluster-settings", "missing.yaml"], "cannot read cluster settings"),
])
def test_bad_submissions_send_nothing(api_server, job_file, tmp_path, args, message):
    p = cli("run", str(job_file), "--kubeflow", api_server.url, *args, home=tmp_path)
    assert p.returncode == 2
    assert message in p.stderr
    assert api_server.requests == []


def test_schedule_without_kubeflow_is_refused(job_file, tmp_path):
    p = cli("run", str(job_file), "--schedule", "0 0 2 * * *", home=tmp_path)
    assert p.returncode == 2 and "--schedule and --namespace go with --kubeflow URL" in p.stderr


def test_katib_backend_and_deploy_are_run_parameters(api_server, job_file, tmp_path):
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--backend", "katib", "--deploy", "flowers",
            home=tmp_path)
    assert p.returncode == 0, p.stderr
    (run,) = _posts(api_server, "runs")
    parameters = run["runtime_config"]["parameters"]
    assert (parameters["backend"], parameters["deploy"], parameters["inference_service_name"]) == \
        ("katib", True, "flowers")
    assert parameters["training_data"] == "s3://images/flowers/train.jsonl"  # what the trial pods read


@pytest.mark.parametrize("args, message", [
    (["--backend", "katib"], "--backend katib and --deploy go with --kubeflow URL (or compile)"),
    (["--deploy", "flowers"], "--backend katib and --deploy go with --kubeflow URL (or compile)"),
    (["--backend", "slurm"], "argument --backend: invalid choice: 'slurm' (choose from"),
])
def test_katib_and_deploy_need_a_cluster(job_file, tmp_path, args, message):
    p = cli("run", str(job_file), *args, home=tmp_path)
    assert p.returncode == 2 and message in p.stderr
    assert not (tmp_path / "runs").exists()


def test_katib_backend_with_data_on_this_machine_sends_nothing(api_server, job_file, tmp_path):
    job = yaml.safe_load(job_file.read_text())
    job_file.write_text(yaml.safe_dump({**job, "training_data": str(tmp_path / "train.jsonl")}))
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--backend", "katib", home=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "is a path on this machine, which a trial pod cannot read" in p.stderr
    assert api_server.requests == []


def test_compile_sets_the_backend_and_deploy_defaults(tmp_path):
    out = tmp_path / "katib.yaml"
    p = cli("compile", "--out", str(out), "--backend", "katib", "--deploy", "flowers", home=tmp_path)
    assert p.returncode == 0, p.stderr
    inputs = next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert inputs["backend"]["defaultValue"] == "katib" and inputs["deploy"]["defaultValue"] is True
    assert inputs["inference_service_name"]["defaultValue"] == "flowers"


def test_compile_with_a_job_sets_its_values_as_defaults(job_file, tmp_path):
    out = tmp_path / "flowers.yaml"
    p = cli("compile", str(job_file), "--out", str(out), home=tmp_path)
    assert p.returncode == 0, p.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["training_data"]["defaultValue"] == "s3://images/flowers/train.jsonl"
    assert inputs["training_parameters"]["defaultValue"] == {"number_of_epochs": 10, "early_stopping": True}
