"""``automl-vision run --kubeflow URL`` and ``compile`` against a real HTTP server on 127.0.0.1 that
answers the Kubeflow Pipelines v2beta1 API calls kfp.Client makes and records every request: what
would reach a cluster is checked offline, down to the pipeline spec and the cron of a recurring run.
The server can also stand in for a multi-user Kubeflow behind its authenticating proxy: it then takes
only requests with ``Authorization: Bearer <token>`` (401 without, 401 for another token, 403 for a
namespace the token may not use, or a redirect to a login page as oauth2-proxy sends)."""

from __future__ import annotations

import json
import socket
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

from automl_vision import __version__
from automl_vision.pipeline.pipeline import pipeline_arguments
from automl_vision.spec.job import load_job

API = "/apis/v2beta1"
REGISTRY = "registry.example.com/ml"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.team-vision.signature"


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
        self.server.requests.append({"method": self.command, "path": url.path, "query": query, "body": body,
                                     "authorization": self.headers.get("Authorization")})
        return url.path, query, body

    def _refused(self, query: dict, body: dict) -> bool:
        """What the authenticating proxy (and the API server's namespace check) answer; True: refused."""
        server = self.server
        if server.token is None:
            return False
        sent = self.headers.get("Authorization")
        if sent is None and server.login_redirect:
            self.send_response(302)
            self.send_header("Location", "/oauth2/start?rd=%2Fpipeline")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        if sent != f"Bearer {server.token}":
            self._answer(401, {"error": "Unauthorized"})
            return True
        namespace = query.get("namespace") or body.get("namespace")
        if namespace in server.forbidden_namespaces:
            self._answer(403, {"error": f"PermissionDenied: no access to namespace {namespace}", "code": 7})
            return True
        return False

    def _broken(self, path: str) -> bool:
        """After healthz, a server that fails (broken: an HTTP status) or closes the connection ("close")."""
        broken = self.server.broken
        if broken is None or path == f"{API}/healthz":
            return False
        if broken == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self._answer(broken, {"error": "the database is not reachable"})
        return True

    def do_GET(self):
        path, query, _ = self._record()
        if self._refused(query, {}) or self._broken(path):
            return
        if path == f"{API}/healthz":
            return self._answer(200, {"multi_user": self.server.multi_user})
        if path == f"{API}/experiments":
            wanted = json.loads(query.get("filter", "{}")).get("predicates", [{}])[0].get("stringValue")
            found = [e for e in self.server.experiments if e["display_name"] == wanted]
            return self._answer(200, {"experiments": found, "total_size": len(found)} if found else {})
        self._answer(404, {"error": f"no route {path}"})

    def do_POST(self):
        path, query, body = self._record()
        if self._refused(query, body) or self._broken(path):
            return
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
        self.token: str | None = None  # set: every request needs "Authorization: Bearer <token>"
        self.login_redirect = False  # with token: a request without one is redirected to a login page
        self.forbidden_namespaces: set[str] = set()
        self.multi_user = False
        self.broken: int | str | None = None  # after healthz: answer this HTTP status, or "close" the connection

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


@pytest.fixture
def cluster_file(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(f"registry: {REGISTRY}\n")
    return path


def cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # HOME: kfp.Client reads (and may write) ~/.config/kfp/context.json; keep the test's own
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run([sys.executable, "-m", "automl_vision", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _posts(server: RecordingServer, path: str) -> list[dict]:
    return [r["body"] for r in server.requests if r["method"] == "POST" and r["path"] == f"{API}/{path}"]


def _compiled(tmp_path: Path, cluster_file: Path) -> list[dict]:
    out = tmp_path / "compiled.yaml"
    p = cli("compile", "--out", str(out), "--cluster-settings", str(cluster_file), home=tmp_path)  # no job: what
    # run --kubeflow sends
    assert p.returncode == 0, p.stderr
    return list(yaml.safe_load_all(out.read_text()))


def test_run_on_kubeflow_sends_the_compiled_pipeline_and_the_job(api_server, job_file, cluster_file, tmp_path):
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--cluster-settings", str(cluster_file),
            home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "run created: run-1 (experiment exp-1)" in p.stdout
    assert f"{api_server.url}/#/runs/details/run-1" in p.stdout

    paths = [(r["method"], r["path"]) for r in api_server.requests]
    # our one check of the endpoint, then kfp.Client's own (it asks whether the endpoint is multi-user)
    assert paths == [("GET", f"{API}/healthz"), ("GET", f"{API}/healthz"), ("GET", f"{API}/experiments"),
                     ("POST", f"{API}/experiments"), ("POST", f"{API}/runs")]
    assert {r["authorization"] for r in api_server.requests} == {None}  # a standalone endpoint: no token
    assert _posts(api_server, "experiments") == [{"display_name": "automl-vision", "namespace": ""}]
    (run,) = _posts(api_server, "runs")
    assert run["display_name"] == "flowers" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == json.loads(json.dumps(pipeline_arguments(load_job(job_file))))

    spec, platform = _compiled(tmp_path, cluster_file)
    assert run["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    assert spec["deploymentSpec"]["executors"]["exec-ingest"]["container"]["image"] == \
        f"{REGISTRY}/automl-vision-cpu:{__version__}"
    # what the API server does first: parse into its message types (unknown fields are refused)
    parsed = json_format.ParseDict(run["pipeline_spec"]["pipeline_spec"], pipeline_spec_pb2.PipelineSpec())
    assert set(parsed.root.dag.tasks) == {"ingest", "preview", "sweep", "evaluate", "package", "register",
                                          "report", "condition-1"}
    assert run["runtime_config"]["parameters"]["backend"] == "local"
    assert run["runtime_config"]["parameters"]["deploy"] is False
    json_format.ParseDict(run["pipeline_spec"]["platform_spec"], pipeline_spec_pb2.PlatformSpec())
    for config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        json_format.ParseDict(config, k8s_pb2.KubernetesExecutorConfig())
    # the parameters fit the pipeline's inputs
    inputs = parsed.root.input_definitions.parameters
    assert set(run["runtime_config"]["parameters"]) <= set(inputs)


def test_schedule_creates_a_recurring_run_in_the_namespace(api_server, job_file, cluster_file, tmp_path):
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--namespace", "team-vision",
            "--schedule", "0 0 2 * * *", "--experiment", "nightly", "--cluster-settings", str(cluster_file),
            home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "recurring run created: rr-1" in p.stdout

    # only our check: kfp.Client asks nothing of healthz when a namespace is given
    assert [r["path"] for r in api_server.requests].count(f"{API}/healthz") == 1
    listing = next(r for r in api_server.requests if r["method"] == "GET" and r["path"] == f"{API}/experiments")
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
    (["--token-file", "missing-token"], "--token-file missing-token: cannot read the token file missing-token"),
])
def test_bad_submissions_send_nothing(api_server, job_file, cluster_file, tmp_path, args, message):
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--cluster-settings", str(cluster_file), *args,
            home=tmp_path)
    assert p.returncode == 2
    assert message in p.stderr
    assert api_server.requests == []


@pytest.mark.parametrize("settings", [None, "gpu: {accelerator_limit: 2}\n"])
def test_without_a_registry_nothing_is_compiled_or_sent(api_server, job_file, tmp_path, settings):
    args = []
    if settings is not None:
        (tmp_path / "cluster.yaml").write_text(settings)
        args = ["--cluster-settings", str(tmp_path / "cluster.yaml")]
    p = cli("run", str(job_file), "--kubeflow", api_server.url, *args, home=tmp_path)
    assert p.returncode == 2
    assert (f"registry is not set, so the pipeline would name the image 'automl-vision-cpu:{__version__}', which "
            "a cluster pulls from Docker Hub") in p.stderr
    assert "(--cluster-settings FILE), e.g. 'registry: registry.example.com/ml'" in p.stderr
    assert api_server.requests == []
    out = tmp_path / "p.yaml"
    p = cli("compile", "--out", str(out), *args, home=tmp_path)
    assert p.returncode == 2 and "registry is not set" in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", [["--schedule", "0 0 2 * * *"], ["--token-file", "token"]])
def test_schedule_and_token_without_kubeflow_are_refused(job_file, tmp_path, args):
    p = cli("run", str(job_file), *args, home=tmp_path)
    assert p.returncode == 2 and "--schedule, --namespace and --token-file go with --kubeflow URL" in p.stderr


def test_katib_backend_and_deploy_are_run_parameters(api_server, job_file, tmp_path):
    settings = tmp_path / "katib-cluster.yaml"
    settings.write_text(f"registry: {REGISTRY}\ntrial_outputs: s3://models/trials\n")  # the Katib backend needs it
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--backend", "katib", "--deploy", "flowers",
            "--cluster-settings", str(settings), home=tmp_path)
    assert p.returncode == 0, p.stderr
    (run,) = _posts(api_server, "runs")
    parameters = run["runtime_config"]["parameters"]
    assert (parameters["backend"], parameters["deploy"], parameters["inference_service_name"]) == \
        ("katib", True, "flowers")
    assert parameters["training_data"] == "s3://images/flowers/train.jsonl"  # what the trial pods read
    # the package itself was compiled for the run's backend (its sweep step placed for Katib), as compile would
    inputs = run["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert (inputs["backend"]["defaultValue"], inputs["inference_service_name"]["defaultValue"]) == ("katib", "flowers")


@pytest.mark.parametrize("args, message", [
    (["--backend", "katib"], "--backend katib and --deploy go with --kubeflow URL (or compile)"),
    (["--deploy", "flowers"], "--backend katib and --deploy go with --kubeflow URL (or compile)"),
    (["--backend", "slurm"], "argument --backend: invalid choice: 'slurm' (choose from"),
])
def test_katib_and_deploy_need_a_cluster(job_file, tmp_path, args, message):
    p = cli("run", str(job_file), *args, home=tmp_path)
    assert p.returncode == 2 and message in p.stderr
    assert not (tmp_path / "runs").exists()


def test_katib_backend_with_data_on_this_machine_sends_nothing(api_server, job_file, cluster_file, tmp_path):
    job = yaml.safe_load(job_file.read_text())
    job_file.write_text(yaml.safe_dump({**job, "training_data": str(tmp_path / "train.jsonl")}))
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--backend", "katib",
            "--cluster-settings", str(cluster_file), home=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "is a path on this machine, which a trial pod cannot read" in p.stderr
    assert api_server.requests == []


def test_compile_sets_the_backend_and_deploy_defaults(tmp_path):
    out = tmp_path / "katib.yaml"
    settings = tmp_path / "katib-cluster.yaml"
    settings.write_text(f"registry: {REGISTRY}\ntrial_outputs: s3://models/trials\n")
    p = cli("compile", "--out", str(out), "--backend", "katib", "--deploy", "flowers",
            "--cluster-settings", str(settings), home=tmp_path)
    assert p.returncode == 0, p.stderr
    inputs = next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert inputs["backend"]["defaultValue"] == "katib" and inputs["deploy"]["defaultValue"] is True
    assert inputs["inference_service_name"]["defaultValue"] == "flowers"


def test_compile_with_a_job_sets_its_values_as_defaults(job_file, cluster_file, tmp_path):
    out = tmp_path / "flowers.yaml"
    p = cli("compile", str(job_file), "--out", str(out), "--cluster-settings", str(cluster_file), home=tmp_path)
    assert p.returncode == 0, p.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["training_data"]["defaultValue"] == "s3://images/flowers/train.jsonl"
    assert inputs["training_parameters"]["defaultValue"] == {"number_of_epochs": 10, "early_stopping": True}


# --- a multi-user Kubeflow behind its authenticating proxy ------------------------------------------------

def _submit(api_server, job_file, cluster_file, tmp_path, *args, env=None):
    return cli("run", str(job_file), "--kubeflow", api_server.url, "--namespace", "team-vision",
               "--cluster-settings", str(cluster_file), *args, home=tmp_path, env=env)


def test_without_a_token_the_refusal_says_how_to_give_one(api_server, job_file, cluster_file, tmp_path):
    api_server.token = TOKEN
    p = _submit(api_server, job_file, cluster_file, tmp_path)
    assert p.returncode == 2, p.stderr
    assert f"{api_server.url} refused the request without a token (HTTP 401: not authenticated)" in p.stderr
    assert "set KF_PIPELINES_TOKEN (e.g. export KF_PIPELINES_TOKEN=$(kubectl -n NAMESPACE create token " \
           "default-editor)) or pass --token-file FILE" in p.stderr
    assert "Traceback" not in p.stderr
    assert [(r["method"], r["path"]) for r in api_server.requests] == [("GET", f"{API}/healthz")]  # nothing sent


@pytest.mark.parametrize("how", ["environment", "file", "service account token"])
def test_the_token_goes_with_every_request(api_server, job_file, cluster_file, tmp_path, how):
    api_server.token = TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args, env = {"environment": ([], {"KF_PIPELINES_TOKEN": TOKEN}),
                 "file": (["--token-file", str(token_file)], None),
                 "service account token": ([], {"KF_PIPELINES_SA_TOKEN_PATH": str(token_file)})}[how]
    p = _submit(api_server, job_file, cluster_file, tmp_path, *args, env=env)
    assert p.returncode == 0, p.stderr
    assert "run created: run-1" in p.stdout
    assert [(r["method"], r["path"]) for r in api_server.requests][-1] == ("POST", f"{API}/runs")
    assert {r["authorization"] for r in api_server.requests} == {f"Bearer {TOKEN}"}


def test_a_token_that_is_not_accepted(api_server, job_file, cluster_file, tmp_path):
    api_server.token = TOKEN
    p = _submit(api_server, job_file, cluster_file, tmp_path, env={"KF_PIPELINES_TOKEN": "expired"})
    assert p.returncode == 2
    assert (f"{api_server.url} refused the request with the token from $KF_PIPELINES_TOKEN (HTTP 401: not "
            "authenticated): the token is not accepted (expired, or not issued for this Kubeflow)") in p.stderr
    assert not any(r["method"] == "POST" for r in api_server.requests)


def test_a_namespace_the_token_may_not_use(api_server, job_file, cluster_file, tmp_path):
    api_server.token = TOKEN
    api_server.forbidden_namespaces = {"team-vision"}
    p = _submit(api_server, job_file, cluster_file, tmp_path, env={"KF_PIPELINES_TOKEN": TOKEN})
    assert p.returncode == 2
    assert ("(HTTP 403: forbidden): the token's identity may not use namespace team-vision; use a token of an "
            "identity that may") in p.stderr
    assert "Traceback" not in p.stderr
    assert not any(r["method"] == "POST" for r in api_server.requests)


def test_a_login_page_redirect_says_the_endpoint_needs_a_token(api_server, job_file, cluster_file, tmp_path):
    api_server.token, api_server.login_redirect = TOKEN, True
    p = _submit(api_server, job_file, cluster_file, tmp_path)
    assert p.returncode == 2
    assert (f"{api_server.url} redirected the request without a token to /oauth2/start?rd=%2Fpipeline (HTTP 302), "
            "a login page: the endpoint is behind an authenticating proxy; give a token") in p.stderr
    assert len(api_server.requests) == 1


def test_a_multi_user_endpoint_needs_a_namespace(api_server, job_file, cluster_file, tmp_path):
    api_server.multi_user = True
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--cluster-settings", str(cluster_file),
            home=tmp_path)
    assert p.returncode == 2
    assert f"{api_server.url} is a multi-user Kubeflow: give --namespace, the namespace of your profile" in p.stderr
    assert len(api_server.requests) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def not_http():
    """A server on 127.0.0.1 that answers every connection with a line that is not HTTP (an SSH banner)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _refused_clearly(p: subprocess.CompletedProcess, host: str, *texts: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: --kubeflow: "), p.stderr
    for text in (host, *texts):
        assert text in p.stderr, (text, p.stderr)


def test_an_endpoint_nothing_listens_on(job_file, cluster_file, tmp_path):
    host = f"http://127.0.0.1:{_closed_port()}"
    p = cli("run", str(job_file), "--kubeflow", host, "--cluster-settings", str(cluster_file), home=tmp_path)
    _refused_clearly(p, host, "whether the Pipelines API is up", "connection refused",
                     "check that the URL is the Pipelines endpoint", "that it is running")


def test_an_endpoint_that_does_not_speak_http(not_http, job_file, cluster_file, tmp_path):
    p = cli("run", str(job_file), "--kubeflow", not_http, "--cluster-settings", str(cluster_file), home=tmp_path)
    _refused_clearly(p, not_http, "the server did not answer in HTTP", "check that the URL is the Pipelines endpoint")


@pytest.mark.parametrize("broken, texts", [
    ("close", ["creating or finding the experiment 'automl-vision'", "closed the connection without answering",
               "that it is running"]),
    (500, ["answered HTTP 500", "while creating or finding the experiment 'automl-vision'",
           "the database is not reachable", "its logs"]),
    (404, ["answered HTTP 404", "is it a Kubeflow Pipelines 2.x endpoint"]),
])
def test_an_endpoint_that_fails_after_its_healthz(api_server, job_file, cluster_file, tmp_path, broken, texts):
    api_server.broken = broken
    p = cli("run", str(job_file), "--kubeflow", api_server.url, "--cluster-settings", str(cluster_file),
            home=tmp_path)
    _refused_clearly(p, api_server.url, *texts)
    assert _posts(api_server, "runs") == []


@pytest.mark.parametrize("host, text", [
    ("localhost:8888", "is not an http:// or https:// URL with a host"),
    ("http://127.0.0.1:99999", "is not a URL: Port out of range"),
])
def test_an_endpoint_that_is_not_a_url(job_file, cluster_file, tmp_path, host, text):
    p = cli("run", str(job_file), "--kubeflow", host, "--cluster-settings", str(cluster_file), home=tmp_path)
    _refused_clearly(p, host, text, "e.g. http://localhost:8080")


def test_the_preview_runs_before_the_sweep_and_shows_the_jobs_models(tmp_path, cluster_file):
    spec = _compiled(tmp_path, cluster_file)[0]
    tasks = spec["root"]["dag"]["tasks"]
    assert "preview" in tasks["sweep"]["dependentTasks"]  # a wrong augmentation is seen before any training
    assert tasks["preview"]["inputs"]["parameters"]["search_space"] == {"componentInputParameter": "search_space"}
