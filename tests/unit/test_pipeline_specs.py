"""The committed specs in components/ and pipelines/ are what the code compiles to (make pipeline-specs),
and each component spec loads the way another team's pipeline would load it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp import components

from automl_vision import __version__
from automl_vision.spec.cluster import PLACEHOLDER_REGISTRY
from automl_vision.pipeline.specs import COMPONENTS, COMPONENTS_DIR, PIPELINE_FILE, PIPELINES_DIR, stale_specs

ROOT = Path(__file__).resolve().parents[2]


def test_committed_specs_are_up_to_date():
    assert stale_specs(ROOT) == [], "run `make pipeline-specs` and commit components/ and pipelines/"


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_component_spec_loads_with_its_inputs_and_outputs(name):
    loaded = components.load_component_from_file(str(ROOT / COMPONENTS_DIR / f"{name}.yaml"))
    source = COMPONENTS[name].component_spec
    assert loaded.name == name
    assert set(loaded.component_spec.inputs or {}) == set(source.inputs or {})
    assert set(loaded.component_spec.outputs or {}) == set(source.outputs or {})
    readme = (ROOT / COMPONENTS_DIR / "README.md").read_text()
    assert f"## {name}\n" in readme
    for key in list(source.inputs or {}) + list(source.outputs or {}):
        assert f"`{key}`" in readme


def test_pipeline_package_loads():
    loaded = components.load_component_from_file(str(ROOT / PIPELINES_DIR / PIPELINE_FILE))
    assert loaded.name == "automl-vision"
    assert {"task", "training_data"} <= set(loaded.component_spec.inputs)


def test_the_committed_pipeline_names_a_registry_that_says_to_compile_your_own():
    text = (ROOT / PIPELINES_DIR / PIPELINE_FILE).read_text()
    spec = next(yaml.safe_load_all(text))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"{PLACEHOLDER_REGISTRY}/automl-vision-cpu:{__version__}",
                      f"{PLACEHOLDER_REGISTRY}/automl-vision-gpu:{__version__}"}
    assert PLACEHOLDER_REGISTRY.endswith(".invalid")  # RFC 2606: never resolves, so never pulls another image
    # what the Pipelines UI shows of an uploaded package, and the file's own header
    for description in (spec["pipelineInfo"]["description"], text.splitlines()[2]):
        assert f"placeholder registry {PLACEHOLDER_REGISTRY}, which no cluster can pull from" in description
        assert "automl-vision compile --cluster-settings FILE" in description
