"""Sending the pipeline to a Kubeflow Pipelines endpoint: one run, or a recurring run for retraining.

What is sent is the package ``compile`` writes (with the given cluster settings) and the job's
values as the run's parameters, so the run page in the Pipelines UI shows the job key by key.

Behind the authenticating proxy of a multi-user Kubeflow (oauth2-proxy with Dex, Istio) every request
needs ``Authorization: Bearer TOKEN``; :func:`find_credentials` says where the token comes from.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from automl_vision.errors import ConfigError
from automl_vision.registry.store import check_cluster_registry
from automl_vision.spec.cluster import ClusterSettings
from automl_vision.spec.job import JobSpec

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "automl-vision"
# robfig/cron (the scheduler behind recurring runs) also takes these descriptors
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")
_FIELD_NAMES = ("second", "minute", "hour", "day of month", "month", "day of week")

#: The bearer token itself (e.g. from ``kubectl -n NAMESPACE create token default-editor``).
TOKEN_ENV = "KF_PIPELINES_TOKEN"
#: kfp's own: a file holding a token, re-read on every request (a projected ServiceAccount token), and the
#: path kfp reads when that variable is unset (kfp.client.KF_PIPELINES_SA_TOKEN_ENV / _PATH).
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_DEFAULT_PATH = "/var/run/secrets/kubeflow/pipelines/token"
#: The namespace of the pod this runs in, which kfp.Client takes in a multi-user Kubeflow when none is given.
POD_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: What to look at when the endpoint cannot be reached or does not answer as the Pipelines API does.
WHAT_TO_CHECK = ("check that the URL is the Pipelines endpoint (a full Kubeflow: https://HOST/pipeline; a standalone "
                 "Kubeflow Pipelines reached with `kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80`: "
                 "http://localhost:8080), that it is running, and that this machine can reach it (VPN, proxy "
                 "variables, firewall)")
HOW_TO_AUTHENTICATE = (f"give a token: set {TOKEN_ENV} (e.g. export {TOKEN_ENV}=$(kubectl -n NAMESPACE create token "
                       f"default-editor)) or pass --token-file FILE; in a pod, the projected ServiceAccount token "
                       f"at {SA_TOKEN_DEFAULT_PATH} (or ${SA_TOKEN_PATH_ENV}) is used")


@dataclass(frozen=True)
class Submitted:
    """What the endpoint answered."""

    kind: str  # run | recurring run
    id: str
    experiment_id: str
    url: str


def check_cron(expression: str) -> str:
    """A six-field cron expression (seconds first), as recurring runs take it; raises ConfigError otherwise."""
    text = " ".join(expression.split())
    if text in _DESCRIPTORS or text.startswith("@every "):
        return text
    fields = text.split(" ") if text else []
    if len(fields) != 6:
        hint = f"; for '{text}' at second 0 write '0 {text}'" if len(fields) == 5 else ""
        raise ConfigError(f"schedule={expression!r} has {len(fields)} field(s); a recurring run's cron has 6, "
                          f"seconds first ({', '.join(_FIELD_NAMES)}), e.g. '0 0 2 * * *' for 02:00 every day"
                          + hint, "--schedule")
    bad = [f"{name} {value!r}" for name, value in zip(_FIELD_NAMES, fields) if not _FIELD.match(value)]
    if bad:
        raise ConfigError(f"schedule={expression!r}: not a cron field: {', '.join(bad)}", "--schedule")
    return text


@dataclass(frozen=True)
class Credentials:
    """The bearer token of the requests: a fixed one, or a file read again before each request."""

    source: str  # what the messages name: "--token-file F", "$KF_PIPELINES_TOKEN", "the ServiceAccount token F"
    token: str | None = None
    token_path: str | None = None

    def current(self) -> str | None:
        if self.token_path is not None:
            return _read_token(self.token_path, self.source)
        return self.token


NO_CREDENTIALS = Credentials("no token")


def _read_token(path: str, source: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the token file {path}: {e.strerror}", source) from None
    if not token:
        raise ConfigError(f"the token file {path} is empty", source)
    return token


def find_credentials(token_file: str | None = None, environ: Mapping[str, str] = os.environ) -> Credentials:
    """The token of the requests, from the first of: ``token_file`` (--token-file), ``$KF_PIPELINES_TOKEN``,
    the file ``$KF_PIPELINES_SA_TOKEN_PATH`` names (an error if it cannot be read), the in-cluster
    ServiceAccount token at kfp's default path when that file exists; else no token (a standalone
    Kubeflow Pipelines takes requests without one)."""
    if token_file:
        source = f"--token-file {token_file}"
        return Credentials(source, token=_read_token(token_file, source))
    if environ.get(TOKEN_ENV, "").strip():
        return Credentials(f"${TOKEN_ENV}", token=environ[TOKEN_ENV].strip())
    if environ.get(SA_TOKEN_PATH_ENV):
        path = environ[SA_TOKEN_PATH_ENV]
        credentials = Credentials(f"the ServiceAccount token {path} (${SA_TOKEN_PATH_ENV})", token_path=path)
        credentials.current()  # readable now, or an error before anything is sent
        return credentials
    if Path(SA_TOKEN_DEFAULT_PATH).is_file():
        return Credentials(f"the ServiceAccount token {SA_TOKEN_DEFAULT_PATH}", token_path=SA_TOKEN_DEFAULT_PATH)
    return NO_CREDENTIALS


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # an authenticating proxy redirects to its login page
        return None


def check_access(host: str, credentials: Credentials, namespace: str | None) -> dict:
    """One request to the endpoint's healthz with the token, so that a refused or missing token, a login
    page or a wrong URL fails at once with what to do (kfp.Client would retry for half a minute and
    then time out). Returns the healthz answer."""
    check_endpoint_url(host)
    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    token = credentials.current()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=30) as answer:
            body = answer.read()
    except urllib.error.HTTPError as e:
        raise access_error(host, e.code, credentials, namespace, location=e.headers.get("Location")) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise unreachable(host, f"asking {url} whether the Pipelines API is up", e) from None
    try:
        health = json.loads(body)
    except ValueError:
        raise ConfigError(f"{url} did not answer as the Pipelines API does (not JSON): is {host} the Pipelines "
                          "endpoint (in a full Kubeflow https://HOST/pipeline)?", "--kubeflow") from None
    if health.get("multi_user") and namespace is None and not Path(POD_NAMESPACE_PATH).is_file():
        raise ConfigError(f"{host} is a multi-user Kubeflow: give --namespace, the namespace of your profile",
                          "--kubeflow")
    return health


def check_endpoint_url(host: str) -> str:
    """``host`` if it is an http(s) URL with a host name; raises ConfigError otherwise."""
    try:
        parts = urlsplit(host)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0-65535
    except ValueError as e:
        raise ConfigError(f"{host!r} is not a URL: {e}; give the Pipelines endpoint, e.g. http://localhost:8080 or "
                          "https://HOST/pipeline", "--kubeflow") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{host!r} is not an http:// or https:// URL with a host; give the Pipelines endpoint, "
                          "e.g. http://localhost:8080 or https://HOST/pipeline", "--kubeflow")
    return host


def unreachable(host: str, doing: str, error: BaseException) -> ConfigError:
    """A connection to the Pipelines endpoint that failed (refused, unknown host, timeout, TLS, not HTTP,
    closed): what was being done, why it failed in words, and what to check."""
    reason = _reason(error)
    return ConfigError(f"could not reach the Kubeflow Pipelines endpoint {host} ({doing}): {reason}; "
                       + WHAT_TO_CHECK, "--kubeflow")


def _reason(error: BaseException) -> str:
    """The innermost cause of a connection error, in words."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "reason", None)
        if isinstance(inner, BaseException):
            error = inner
            continue
        if error.__cause__ is not None:
            error = error.__cause__
            continue
        if error.args and isinstance(error.args[-1], BaseException):  # urllib3's ProtocolError(text, error)
            error = error.args[-1]
            continue
        break
    if isinstance(error, (TimeoutError,)) or type(error).__name__.endswith("TimeoutError") or "timed out" in str(error):
        return "no answer in time (timed out)"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: nothing listens on that host and port"
    if isinstance(error, http.client.RemoteDisconnected) or isinstance(error, ConnectionResetError):
        return "the server closed the connection without answering"
    if isinstance(error, http.client.BadStatusLine):
        return f"the server did not answer in HTTP ({str(error)[:60]!r})"
    if type(error).__name__ in ("gaierror", "NameResolutionError") or "Name or service not known" in str(error):
        return "the host name could not be resolved"
    text = str(error) or type(error).__name__
    return text if len(text) < 300 else text[:300] + "..."


def access_error(host: str, status: int, credentials: Credentials, namespace: str | None,
                 location: str | None = None) -> ConfigError:
    """What an HTTP status of the Pipelines endpoint means for the user, and what to do."""
    sent = "without a token" if credentials is NO_CREDENTIALS else f"with the token from {credentials.source}"
    if status == 401:
        what = (f"{host} refused the request {sent} (HTTP 401: not authenticated): "
                + (HOW_TO_AUTHENTICATE if credentials is NO_CREDENTIALS else
                   "the token is not accepted (expired, or not issued for this Kubeflow); get a new one, e.g. "
                   "kubectl -n NAMESPACE create token default-editor"))
    elif status == 403:
        where = f"namespace {namespace}" if namespace else "this Kubeflow"
        what = (f"{host} refused the request {sent} (HTTP 403: forbidden): "
                + (HOW_TO_AUTHENTICATE if credentials is NO_CREDENTIALS else
                   f"the token's identity may not use {where}; use a token of an identity that may (e.g. the "
                   f"profile's default-editor ServiceAccount), or ask the profile's owner to add you as a contributor"))
    elif 300 <= status < 400:
        what = (f"{host} redirected the request {sent} to {location or 'another page'} (HTTP {status}), a login "
                f"page: the endpoint is behind an authenticating proxy; " + HOW_TO_AUTHENTICATE)
    else:
        what = (f"{host} answered HTTP {status} to the Pipelines API's healthz: is it the Pipelines endpoint "
                "(in a full Kubeflow https://HOST/pipeline)?")
    return ConfigError(what, "--kubeflow")


def run_name(job: JobSpec) -> str:
    return job.name or f"automl-vision-{job.task.value.replace('_', '-')}"


def submit(job: JobSpec, host: str, *, namespace: str | None = None, schedule: str | None = None,
           experiment: str = DEFAULT_EXPERIMENT, settings: ClusterSettings | None = None,
           service_account: str | None = None, device: str = "auto", backend: str = "local",
           inference_service: str | None = None, credentials: Credentials | None = None,
           registry: str = "", registered_model: str = "", promotion_margin: float = 0.0,
           explain_images: int = -1) -> Submitted:
    """Compile the pipeline and start it on ``host`` (a run, or with ``schedule`` a recurring run);
    ``backend`` runs the sweep's trials in its pod (local) or as Katib Experiments (katib),
    ``inference_service`` deploys the packaged model as that KServe InferenceService (when the registry's
    gate promotes it); ``registry`` (a Kubeflow Model Registry URL), ``registered_model`` and
    ``promotion_margin`` are the register step's; ``credentials`` (default :func:`find_credentials`)
    authenticate every request."""
    # kfp: the CLI's start-up time (this module's checks serve commands that never compile)
    from kfp_server_api.exceptions import ApiException

    from automl_vision.pipeline.pipeline import compile_pipeline, pipeline_arguments

    check_endpoint_url(host)
    cron = check_cron(schedule) if schedule is not None else None
    credentials = credentials if credentials is not None else find_credentials()
    for key in ("training_data", "validation_data"):
        value = getattr(job, key)
        if value and "://" not in value:
            log.warning("%s is a path on this machine (%s): the pipeline's pods read it as it is, so it must be "
                        "on the data volume of the cluster settings or in the image", key, value)
    check_cluster_registry(registry)
    arguments = pipeline_arguments(job, device=device, backend=backend, inference_service=inference_service,
                                   registry=registry, registered_model=registered_model,
                                   promotion_margin=promotion_margin, explain_images=explain_images)
    with tempfile.TemporaryDirectory(prefix="automl-vision-") as folder:
        # compiled as `compile --backend B --deploy NAME` would: the sweep step is placed for its backend
        package = str(compile_pipeline(Path(folder) / "pipeline.yaml",
                                       settings=settings if settings is not None else ClusterSettings(),
                                       backend=backend, inference_service=inference_service))
        check_access(host, credentials, namespace)
        # kfp.Client prints links and warns about server versions; we say what happened ourselves.
        doing = ["connecting"]  # what the requests below are doing, for the message when one fails
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                _refused_as_config_error(host, credentials, namespace, ApiException, doing):
            warnings.simplefilter("ignore", FutureWarning)
            client = _client(host, namespace, credentials)
            doing[0] = f"creating or finding the experiment {experiment!r}"
            exp = client.create_experiment(experiment, namespace=namespace)
            if cron is None:
                doing[0] = "starting the run"
                run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name(job),
                                          pipeline_package_path=package, params=arguments,
                                          service_account=service_account)
                return Submitted("run", run.run_id, exp.experiment_id, f"{host.rstrip('/')}/#/runs/details/{run.run_id}")
            doing[0] = "creating the recurring run"
            recurring = client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=run_name(job), cron_expression=cron,
                pipeline_package_path=package, params=arguments, max_concurrency=1, no_catchup=True,
                service_account=service_account)
    return Submitted("recurring run", recurring.recurring_run_id, exp.experiment_id,
                     f"{host.rstrip('/')}/#/recurringrun/details/{recurring.recurring_run_id}")


@contextlib.contextmanager
def _refused_as_config_error(host: str, credentials: Credentials, namespace: str | None, api_exception: type,
                             doing: list[str] | None = None):
    """The endpoint's refusals and failures as ConfigError: what was being done, what it answered, what to do."""
    import urllib3.exceptions  # with kfp, only when a request is made

    doing = doing or ["sending the pipeline"]
    # urllib3's "Retrying ..." warnings go: the error below says what failed (a filter, as kfp's client sets
    # urllib3's log level itself)
    retries = logging.getLogger("urllib3.connectionpool")
    quiet = _NoRetryWarnings()
    retries.addFilter(quiet)
    try:
        yield
    except api_exception as e:
        if e.status in (401, 403) or 300 <= (e.status or 0) < 400:
            raise access_error(host, e.status, credentials, namespace) from None
        if not e.status:  # kfp_server_api wraps a failed connection in an ApiException without a status
            raise unreachable(host, doing[0], e) from None
        body = " ".join(str(e.body or "").split())[:300]
        hint = ("the server failed; its logs (kubectl -n kubeflow logs deploy/ml-pipeline) say why"
                if e.status >= 500 else
                "is it a Kubeflow Pipelines 2.x endpoint (the v2beta1 API), and the URL the Pipelines endpoint "
                "(in a full Kubeflow https://HOST/pipeline)?")
        raise ConfigError(f"{host} answered HTTP {e.status} {e.reason or ''} while {doing[0]}"
                          + (f": {body}" if body else "") + f"; {hint}", "--kubeflow") from None
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
        raise unreachable(host, doing[0], e) from None
    finally:
        retries.removeFilter(quiet)


class _NoRetryWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying")


def _client(host: str, namespace: str | None, credentials: Credentials = NO_CREDENTIALS):
    from kfp import Client  # kfp: the CLI's start-up time
    from kfp.client import ServiceAccountTokenVolumeCredentials

    auth = {}
    if credentials.token_path is not None:  # re-read before each request: the kubelet rotates the file
        auth["credentials"] = ServiceAccountTokenVolumeCredentials(path=credentials.token_path)
    elif credentials.token is not None:
        auth["existing_token"] = credentials.token
    # Client reads ~/.config/kfp/context.json for a namespace only when none is given
    return Client(host=host, namespace=namespace, **auth) if namespace else Client(host=host, **auth)
