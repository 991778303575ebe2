"""KServe's InferenceService CRD schema (../shared/crds/, from KServe's repository, Apache-2.0) as a
validator for tests: JSON-schema errors, plus fields the structural schema does not declare (refused
as ``kubectl apply --validate=strict`` refuses them). Imported by the tests (``tests/`` is on
``sys.path`` through its conftest)."""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import yaml

CRD = Path(__file__).resolve().parents[2] / "shared" / "crds" / "serving.kserve.io_inferenceservices.yaml"


@functools.lru_cache(maxsize=1)
def _crd_schema() -> dict:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB of YAML
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(instance, schema: dict, where: str = "") -> list[str]:
    """Fields a structural schema does not declare (the API server prunes them, or with strict field
    validation refuses them: either way a typo'd field would silently do nothing)."""
    out = []
    if isinstance(instance, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if props is not None and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out += [f"{where}.{k}" for k in instance if k not in props]
        for k, v in instance.items():
            sub = (props or {}).get(k) or (schema.get("additionalProperties") if isinstance(
                schema.get("additionalProperties"), dict) else None)
            if sub is not None:
                out += unknown_fields(v, sub, f"{where}.{k}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(instance):
            out += unknown_fields(v, schema["items"], f"{where}[{i}]")
    return out


def check_inference_service(doc: dict) -> list[str]:
    schema = _crd_schema()
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    return errors + [f"{f}: unknown field" for f in unknown_fields(doc, schema)]
