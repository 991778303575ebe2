"""The standalone KServe model server for one package (``automl-vision serve``).

Routes: ``POST /score``, the path the original product's clients call, and ``POST
/v1/models/<name>:predict`` (ours, registered ahead of KServe's own v1 route, whose decoder reads
``application/octet-stream`` and header-less bodies as JSON and so refuses raw image bytes); KServe's
v2 (``POST /v2/models/<name>/infer``) and health and metadata routes.

Every request passes :class:`RequestLimits` (body size, time to send the body). A refused request is
logged on one line (method, path, status, message), never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# kserve.model_server reads sys.argv when imported: this module is imported only to serve.
import kserve
import orjson
from fastapi import Request
from fastapi.responses import Response
from kserve.errors import InvalidInput
from kserve.model_server import app as kserve_app

from automl_vision.errors import DataError
from automl_vision.serving.predictor import ImageModelPredictor

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "model"
SCORE_ROUTE = "/score"


def error_response(status: int, message: str, method: str, path: str, *, close: bool = False) -> Response:
    """A JSON ``{"error": message}`` answer, logged on one line."""
    log.warning("%s %s -> %d: %s", method, path, status, message)
    headers = {"connection": "close"} if close else None
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


class RequestLimits:
    """ASGI middleware: refuses a body over ``max_bytes`` (413, from ``Content-Length`` before reading, or
    as it streams in) and a body not complete ``timeout_s`` after the request's headers (408, then the
    connection is closed), so a client sending a byte a second cannot hold a connection open.

    The body is read in full here, within both limits, before the route runs; the route then reads
    it from memory (every route reads the whole body anyway)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope.get("method", ""), scope.get("path", "")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = error_response(413, f"the request body has {int(length):,} bytes, over the limit of "
                                      f"{self.max_bytes:,} (max_request_bytes)", method, path, close=True)
            return await response(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        chunks: list[bytes] = []
        received = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                response = error_response(408, f"the request body was not complete after {self.timeout_s:g} s "
                                          f"({received:,} bytes received; request_timeout_s)", method, path,
                                          close=True)
                return await response(scope, receive, send)
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            received += len(body)
            if received > self.max_bytes:
                response = error_response(413, f"the request body is over the limit of {self.max_bytes:,} bytes "
                                          "(max_request_bytes)", method, path, close=True)
                return await response(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class OneLineClientErrors(logging.Filter):
    """KServe logs every request it refuses (400, 404, 503) with a full traceback; keep one line."""

    CLIENT_ERRORS = ("InvalidInput", "ModelNotFound", "ModelNotReady", "RequestValidationError")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in self.CLIENT_ERRORS:
            record.msg, record.args = "refused: %s: %s", (type(exc).__name__, str(exc).splitlines()[0][:500])
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def build_predictor(model_dir: str | Path, name: str = DEFAULT_MODEL_NAME,
                    settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = ()):
    """A loaded :class:`ImageModelPredictor` (raises ConfigError for a bad package or settings)."""
    predictor = ImageModelPredictor(name, model_dir, settings_layers)
    predictor.load()
    return predictor


def add_score_route(app, predictor) -> None:
    """``POST /score`` and ``POST /v1/models/<name>:predict``, answered by ``predictor``: the original
    product's body, raw image bytes or KServe v1 ``instances``. Must run before KServe registers its
    own routes (``ModelServer.start``), so that these come first."""
    async def score(request: Request):
        body = await request.body()
        headers = dict(request.headers.items())
        try:
            response, _ = await predictor(body, headers=headers)
        except (InvalidInput, DataError) as e:
            return error_response(400, str(e), request.method, request.url.path)
        return Response(orjson.dumps(response), media_type="application/json")

    v1 = f"/v1/models/{predictor.name}:predict"
    for path in (SCORE_ROUTE, v1):
        if not any(getattr(r, "path", None) == path for r in app.routes):
            app.add_api_route(path, score, methods=["POST"], response_model=None)


def serve(model_dir: str | Path, *, port: int = 8080, name: str = DEFAULT_MODEL_NAME,
          settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> None:
    """Load the package and serve it on ``port`` (all interfaces) until interrupted."""
    predictor = build_predictor(model_dir, name, settings_layers)
    add_score_route(kserve_app, predictor)
    s = predictor.engine.settings
    kserve_app.add_middleware(RequestLimits, max_bytes=s.max_request_bytes, timeout_s=s.request_timeout_s)
    logging.getLogger("kserve").addFilter(OneLineClientErrors())
    # FastAPI warns on every answer KServe's own routes send with ORJSONResponse; nothing to act on here.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    log.info("serving %s on port %d: POST /v1/models/%s:predict, /v2/models/%s/infer, %s "
             "(batches of up to %d, waiting up to %g ms; bodies up to %d bytes sent within %g s)",
             predictor.package.path, port, name, name, SCORE_ROUTE, predictor.batcher.max_batch_size,
             s.max_batch_latency_ms, s.max_request_bytes, s.request_timeout_s)
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False,
                                enable_docs_url=False)
    server.start([predictor])
