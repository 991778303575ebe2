"""The KServe predictor: a ``kserve.Model`` that answers the original product's requests.

``load`` reads the package (exactly one weights file), resolves the inference settings and builds
the engine. A request goes ``preprocess`` (read the request form, decode and prepare every image in
a worker thread; bad input becomes KServe's ``InvalidInput``, a 400 with the message) ->
``predict`` (the images join the micro-batcher, which runs concurrent requests' images in one
forward pass) -> ``postprocess`` (the answer in the request's own form).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# kserve.model_server reads sys.argv when imported (KServe's own flags); import kserve only from
# the serving code paths, never from code that `train` or `run` import.
import kserve
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput

from automl_vision.errors import DataError
from automl_vision.serving import protocol
from automl_vision.serving.batching import MicroBatcher
from automl_vision.serving.engine import Engine, load_engine
from automl_vision.serving.explain import Explainer
from automl_vision.serving.images import InvalidImage, b64decode, check_size, decode_image
from automl_vision.serving.package import ModelPackage, load_package

log = logging.getLogger(__name__)

V2_INPUT_HINT = ('send one input of datatype BYTES holding base64-encoded images (shape [N]), '
                 'or UINT8 pixels of shape [N, H, W, 3]')


@dataclass
class _Job:
    request: protocol.ParsedRequest
    prepared: list[Any]
    #: Per image: the checked explanation parameters, or None.
    explain: list[Any] | None = None


@dataclass
class _Answer:
    request: protocol.ParsedRequest
    results: list[dict[str, Any]]


class ImageModelPredictor(kserve.Model):
    """Serves one model package. ``settings_layers``: ``(source, mapping)`` pairs over the package's
    settings.json, lowest precedence first (see ``serving/settings.py``)."""

    def __init__(self, name: str, model_dir: str | Path,
                 settings_layers: Sequence[tuple[str, Mapping[str, Any]]] = ()):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.settings_layers = list(settings_layers)
        self.package: ModelPackage | None = None
        self.engine: Engine | None = None
        self.batcher: MicroBatcher | None = None
        self.explainer: Explainer | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def load(self) -> bool:
        self.package = load_package(self.model_dir)
        settings = self.package.settings(*self.settings_layers)
        self.engine = load_engine(self.package, settings)
        self.batcher = MicroBatcher(self.engine.infer, settings.batch_size_for(self.engine.device),
                                    settings.max_batch_latency_ms / 1000)
        self.explainer = Explainer(self.engine)
        self.ready = True
        return self.ready

    def stop(self):
        if self.batcher is not None:
            self.batcher.close()
        super().stop()

    def get_input_types(self) -> list[dict]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        out = [{"name": "predictions", "datatype": "BYTES", "shape": [-1]}]
        if self.engine is not None and self.engine.task.is_classification:
            n = len(self.engine.labels)
            out += [{"name": "probs", "datatype": "FP32", "shape": [-1, n]},
                    {"name": "labels", "datatype": "BYTES", "shape": [n]}]
        return out

    # --- the request path --------------------------------------------------------------------------
    def validate(self, payload):
        return payload  # preprocess has read and checked the request in full

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Job:
        try:
            request = self._parse(payload, headers or {})
            explain = self._explain_params(request)
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(None, self._prepare_all, request)
        except DataError as e:
            raise InvalidInput(str(e)) from None
        return _Job(request, prepared, explain)

    async def predict(self, payload: _Job, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> _Answer:
        results = await self.batcher.submit(payload.prepared)
        if payload.explain and any(p is not None for p in payload.explain):
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(None, self._explain_all, payload, results)
        return _Answer(payload.request, results)

    async def postprocess(self, result: _Answer, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> Any:
        form = result.request.form
        if form in (protocol.ORIGINAL, protocol.RAW):
            return result.results
        if form == protocol.INSTANCES:
            return {"predictions": result.results}
        return self._v2_response(result)

    # --- helpers -----------------------------------------------------------------------------------
    def _explain_params(self, request: protocol.ParsedRequest) -> list[Any] | None:
        """The checked parameters of each image that asks for an explanation; the limits are the
        ``explain_max_*`` settings (a 400 beyond them, before any work)."""
        asked = request.explained()
        if not asked:
            return None
        limit = self.engine.settings.explain_max_images
        if limit == 0:
            raise protocol.BadRequest("explanations are turned off on this server (explain_max_images=0); send "
                                      "model_explainability false or leave it out")
        if len(asked) > limit:
            raise protocol.BadRequest(f"{len(asked)} images ask for an explanation (model_explainability); this "
                                      f"server explains at most {limit} per request (explain_max_images): send "
                                      "them in several requests")
        out: list[Any] = [None] * len(request.images)
        for i in asked:
            out[i] = self.explainer.parse(request.explain[i], f"{request.where[i]}.xai_parameters")
        return out

    def _explain_all(self, job: _Job, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.explainer.explain(x, r, p) if p is not None else r
                for x, r, p in zip(job.prepared, results, job.explain)]

    def _parse(self, payload: Any, headers: Mapping[str, str]) -> protocol.ParsedRequest:
        if isinstance(payload, InferRequest):
            return self._parse_v2(payload)
        if isinstance(payload, (bytes, bytearray)):
            return protocol.parse_bytes_request(bytes(payload), headers.get("content-type"))
        return protocol.parse_json_request(payload)

    def _prepare_all(self, request: protocol.ParsedRequest) -> list[Any]:
        limits = self.engine.settings.image_limits()
        prepare = self.engine.preparer
        prepared = []
        for image, where in zip(request.images, request.where):
            if isinstance(image, np.ndarray):
                check_size(image.shape[1], image.shape[0], where, **limits)
                pil = Image.fromarray(image)
            else:
                pil = decode_image(image, where=where, **limits)
            prepared.append(prepare(pil))
        return prepared

    def _parse_v2(self, request: InferRequest) -> protocol.ParsedRequest:
        inputs = request.inputs
        if not inputs:
            raise protocol.BadRequest(f"the v2 request has no inputs; {V2_INPUT_HINT}")
        if len(inputs) > 1:
            named = [i for i in inputs if i.name in ("image", "images")]
            if len(named) != 1:
                raise protocol.BadRequest(f"the v2 request has {len(inputs)} inputs "
                                          f"({', '.join(i.name for i in inputs)}); {V2_INPUT_HINT}")
            inputs = named
        inp = inputs[0]
        name = inp.name
        shape = list(inp.shape or [])
        if not shape or shape[0] == 0:
            raise protocol.BadRequest(f"empty batch: input {name!r} has shape {shape}; {V2_INPUT_HINT}")
        outputs = [o.name for o in request.request_outputs] if request.request_outputs else None
        if inp.datatype == "BYTES":
            try:
                values = inp.as_numpy().reshape(-1)
            except Exception as e:  # KServe's own reshape/dtype errors
                raise protocol.BadRequest(f"input {name!r}: {e}") from None
            images, where = [], []
            for i, v in enumerate(values):
                at = f"inputs[{name!r}][{i}]"
                images.append(_v2_bytes(v, at))
                where.append(at)
            return protocol.ParsedRequest(protocol.V2, images, where, request.id, outputs)
        if inp.datatype == "UINT8":
            try:
                pixels = inp.as_numpy()
            except Exception as e:
                raise protocol.BadRequest(f"input {name!r}: {e}") from None
            if pixels.ndim == 3:
                pixels = pixels[None]
            if pixels.ndim != 4 or pixels.shape[-1] != 3:
                raise protocol.BadRequest(f"input {name!r}: UINT8 pixels must have shape [N, H, W, 3] or "
                                          f"[H, W, 3], got {list(pixels.shape)}")
            limit = self.engine.settings.max_image_pixels
            h, w = pixels.shape[1:3]
            if h * w > limit:
                raise InvalidImage(f"input {name!r}: {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                                   "(max_image_pixels)")
            if h == 0 or w == 0:
                raise InvalidImage(f"input {name!r}: image size {w}x{h}")
            images = [np.ascontiguousarray(p) for p in pixels]
            return protocol.ParsedRequest(protocol.V2, images, [f"inputs[{name!r}][{i}]" for i in range(len(images))],
                                          request.id, outputs)
        raise protocol.BadRequest(f"input {name!r} has datatype {inp.datatype}; {V2_INPUT_HINT}")

    def _v2_response(self, answer: _Answer) -> InferResponse:
        results = answer.results
        outputs = [InferOutput("predictions", [len(results)], "BYTES",
                               data=[json.dumps(r, separators=(",", ":")) for r in results])]
        if self.engine.task.is_classification:
            probs = np.asarray([r["probs"] for r in results], dtype=np.float32)
            outputs.append(InferOutput("probs", list(probs.shape), "FP32", data=probs.reshape(-1).tolist()))
            outputs.append(InferOutput("labels", [len(self.engine.labels)], "BYTES", data=list(self.engine.labels)))
        wanted = answer.request.outputs
        if wanted:
            known = {o.name for o in outputs}
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise InvalidInput(f"unknown output(s) {', '.join(unknown)}; this model answers "
                                   f"{', '.join(sorted(known))}")
            outputs = [o for o in outputs if o.name in wanted]
        return InferResponse(response_id=answer.request.request_id or "", model_name=self.name,
                             infer_outputs=outputs)


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r")


def _v2_bytes(value: Any, where: str) -> bytes:
    """A v2 BYTES element: a base64 string (JSON), or raw image bytes (binary extension)."""
    if isinstance(value, str):
        return b64decode(value, where)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value)
        # Encoded images start with bytes outside base64's alphabet (0x89 PNG, 0xFF JPEG, BM is
        # inside it but a BMP header is not valid base64 as a whole).
        if value and set(value[:64]) <= _B64_ALPHABET:
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                pass
        return value
    raise protocol.BadRequest(f"{where}: expected a base64 string, got {type(value).__name__}")
