"""The package's layers and import rules, checked on every test run.

The layers themselves are import-linter contracts in pyproject.toml (``lint-imports``, run by ``make test``); this
module keeps the rule that an import inside a function says why it is not at the top of its module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import automl_vision

PACKAGE = Path(automl_vision.__file__).parent


def _function_imports_without_reason(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines), filename=str(path))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if any("component" in ast.unparse(d) for d in func.decorator_list):
            continue  # a Kubeflow component: kfp copies the body alone into its step, imports included
        for node in ast.walk(func):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            row = node.lineno - 1
            # a reason on the line, on another line of the same run of imports (or its `try:`), or just above it
            start = row
            while start > 0 and (lines[start - 1].lstrip().startswith(("import ", "from ", "try:"))
                                 or not lines[start - 1].strip()):
                start -= 1
            run = lines[start:row + 1]
            if any("#" in line for line in run) or (start > 0 and lines[start - 1].lstrip().startswith("#")):
                continue
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[row].strip()}")
    return found


def test_imports_inside_functions_say_why():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _function_imports_without_reason(path)]
    assert not found, ("imports inside functions without a comment saying why (put them at the top of the module, "
                       "or say why not: an optional dependency, the CLI's start-up time):\n" + "\n".join(found))
