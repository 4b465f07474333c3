"""The boundaries the module layout promises (README "Design"), checked on the source.

- The upstream client knows nothing of serving: no aiohttp.web, no regcache.web/proxy/app.
- aiohttp.web appears only in the HTTP layer (regcache/web/) and the composition (app.py).
- Only config.py reads the environment; only metrics.py and app.py use prometheus_client.
- Nothing but the composition and CLI imports regcache.app.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "regcache"
MODULES = sorted(PACKAGE.rglob("*.py"))


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", [p for p in MODULES if "upstream" in p.parts], ids=rel)
def test_upstream_client_knows_nothing_of_serving(path):
    bad = {n for n in imports(path) if n.startswith(("aiohttp.web", "regcache.web", "regcache.proxy",
                                                       "regcache.app", "regcache.store"))}
    assert not bad, f"{rel(path)} imports {bad}"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_aiohttp_web_only_in_the_http_layer(path):
    if "web" in path.parent.parts[-1:] or path.name in ("app.py",):
        return
    bad = {n for n in imports(path) if n.startswith("aiohttp.web")}
    assert not bad, f"{rel(path)} imports {bad}"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_environment_read_only_by_config(path):
    if path.name == "config.py":
        return
    source = path.read_text()
    assert "os.environ" not in source and "getenv(" not in source, rel(path)


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_prometheus_client_only_in_metrics(path):
    if path.name in ("metrics.py", "app.py"):
        return
    assert not {n for n in imports(path) if n.startswith("prometheus_client")}, rel(path)


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_only_composition_imports_app(path):
    if path.name in ("app.py", "cli.py", "cli_lifecycle.py", "__main__.py"):
        return
    assert not {n for n in imports(path) if n.startswith("regcache.app")}, rel(path)


def test_nothing_runs_at_import_time():
    """Module bodies hold only imports, definitions, constants and docstrings."""
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
               ast.Assign, ast.AnnAssign, ast.Expr, ast.If)
    for path in MODULES:
        if path.name == "__main__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            assert isinstance(node, allowed), f"{rel(path)}:{node.lineno}"
            if isinstance(node, ast.Expr):
                assert isinstance(node.value, ast.Constant), f"{rel(path)}:{node.lineno} calls at import"
