"""The documentation names code that exists: every ``automl_vision.x.y`` and ``automl_vision/x.py`` it cites."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "images" / "README.md", *(ROOT / "docs").glob("*.md")])
# names that are data, not code: the Parquet manifest's schema metadata key
NOT_CODE = {"automl_vision.task"}


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=[p.name if p.parent.name != "images" else "images/README.md" for p in PAGES])
def test_cited_code_exists(page):
    text = page.read_text()
    missing = [m for m in sorted(set(re.findall(r"automl_vision/[\w/]+\.py", text))) if not (ROOT / m).is_file()]
    missing += [d for d in sorted(set(re.findall(r"automl_vision(?:\.[A-Za-z_]\w*)+", text)))
                if d not in NOT_CODE and not _resolves(d)]
    assert not missing, f"{page.relative_to(ROOT)} cites code that does not exist: {missing}"
