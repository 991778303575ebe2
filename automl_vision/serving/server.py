"""The standalone KServe model server for one package (``automl-vision serve``).

Routes: KServe's v1 (``POST /v1/models/<name>:predict``) and v2 (``POST /v2/models/<name>/infer``),
their health and metadata routes, and ``POST /score``, the path the original product's clients
call, taking the same bodies as v1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import ORJSONResponse

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "model"
SCORE_ROUTE = "/score"


def build_predictor(model_dir: str | Path, name: str = DEFAULT_MODEL_NAME,
                    settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = ()):
    """A loaded :class:`ImageModelPredictor` (raises ConfigError for a bad package or settings)."""
    from automl_vision.serving.predictor import ImageModelPredictor

    predictor = ImageModelPredictor(name, model_dir, settings_layers)
    predictor.load()
    return predictor


def add_score_route(app, predictor) -> None:
    """``POST /score``: the original product's scoring path, answered by ``predictor`` like v1."""

    async def score(request: Request):
        body = await request.body()
        headers = dict(request.headers.items())
        response, _ = await predictor(body, headers=headers)
        return ORJSONResponse(content=response)

    if not any(getattr(r, "path", None) == SCORE_ROUTE for r in app.routes):
        app.add_api_route(SCORE_ROUTE, score, methods=["POST"], response_model=None)


def serve(model_dir: str | Path, *, port: int = 8080, name: str = DEFAULT_MODEL_NAME,
          settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> None:
    """Load the package and serve it on ``port`` (all interfaces) until interrupted."""
    predictor = build_predictor(model_dir, name, settings_layers)

    import kserve
    from kserve.model_server import app

    add_score_route(app, predictor)
    s = predictor.engine.settings
    log.info("serving %s on port %d: POST /v1/models/%s:predict, /v2/models/%s/infer, %s "
             "(batches of up to %d, waiting up to %g ms)", predictor.package.path, port, name, name,
             SCORE_ROUTE, predictor.batcher.max_batch_size, s.max_batch_latency_ms)
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False,
                                enable_docs_url=False)
    server.start([predictor])
