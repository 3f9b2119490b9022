"""The engine imports nothing from the web, queue or database layers, nor from the rest of app."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "pydantic_settings")

PROBE = """
import importlib, json, pkgutil, sys
import app.training
modules = [info.name for info in pkgutil.walk_packages(app.training.__path__, "app.training.")]
for name in {first}:
    importlib.import_module(name)
if {walk}:
    for name in modules:
        importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def imported_after(first: list[str], *, walk: bool) -> set[str]:
    code = PROBE.format(first=first, walk=walk)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return set(json.loads(done.stdout))


def test_engine_imports_no_service_layer():
    modules = imported_after(["app.training.loop", "app.training.export", "app.training.spec"],
                             walk=True)
    assert "app.training.loop" in modules
    leaked = sorted(name for name in modules
                    if name.split(".")[0] in FORBIDDEN
                    or (name.startswith("app.") and not name.startswith("app.training")))
    assert leaked == []


def test_spec_imports_neither_torch_nor_sklearn():
    modules = imported_after(["app.training.spec"], walk=False)
    assert "app.training.spec" in modules
    assert not {"torch", "sklearn", "numpy"} & {name.split(".")[0] for name in modules}


def training_import_graph() -> dict[str, set[str]]:
    """Return module -> engine modules it imports (anywhere in the file, TYPE_CHECKING aside)."""
    import ast

    root = ROOT / "app" / "training"
    names = {".".join(("app", "training", *path.relative_to(root).with_suffix("").parts))
             .removesuffix(".__init__"): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text())
        checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                    and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in checking:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names))
                          if m in names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in names}
        graph[name] = found - {name}
    return graph


def test_the_engine_has_no_import_cycle():
    graph = training_import_graph()
    assert "app.training.loop" in graph and "app.training.results" in graph["app.training.loop"]
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
