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
