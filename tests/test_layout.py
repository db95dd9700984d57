"""The package's layers depend only downward (README, "Layout"): a module may import from
its own layer and the layers below it, never from one above. Checked on the source, so a
new upward import fails here before it tangles the tree."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ddpmcodec"

# layer -> the layers it may import from (besides itself and the root helpers)
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "codec": {"core", "io"},
    "analysis": {"core", "io"},
    "pipelines": {"core", "io", "codec", "analysis"},
    "cli": {"core", "io", "codec", "analysis", "pipelines"},
}
ROOT_HELPERS = {"errors", "progress"}  # cross-cutting, import nothing of the package


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import (use absolute)")
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "ddpmcodec" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


SOURCES = sorted(p for p in PKG.rglob("*.py") if _layer(p) not in ("__init__", "__main__"))


def test_every_module_belongs_to_a_layer():
    layers = {_layer(p) for p in SOURCES}
    assert layers <= set(ALLOWED) | ROOT_HELPERS, layers - set(ALLOWED) - ROOT_HELPERS


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_downward(path):
    layer = _layer(path)
    allowed = ALLOWED.get(layer, set()) | {layer} | ROOT_HELPERS
    if layer in ROOT_HELPERS:
        allowed = {layer}
    bad = [(line, target) for line, target in _imports(path)
           if target not in allowed and target in set(ALLOWED) | ROOT_HELPERS]
    assert not bad, f"{path.relative_to(PKG)} imports upward: {bad}"
