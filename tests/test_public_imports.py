"""The engine's public names (``app.training.__all__``) resolve, and the API starts without torch."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (imports are per process) and return the JSON it prints."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_api_app_imports_without_torch():
    seen = run_python(
        "import json, sys\n"
        "import app.main\n"
        "from app.training import JobSpec, catalog\n"
        "tables = catalog()\n"
        "print(json.dumps({'app': type(app.main.app).__name__, 'tables': len(tables),"
        " 'loaded': sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn')"
        " or m in ('app.training.loop', 'app.training.preflight'))}))\n")
    assert seen["app"] == "FastAPI" and seen["tables"] > 0
    assert seen["loaded"] == []


def test_every_public_name_resolves_to_what_its_module_defines():
    seen = run_python(
        "import importlib, json, types\n"
        "import app.training.preflight, app.training.catalog  # the submodules first: no shadowing\n"
        "import app.training as engine\n"
        "from app.training import catalog, dry_run\n"
        "out = {'callable': [callable(catalog), callable(dry_run)], 'names': {},"
        " 'listed': sorted(engine.__all__) == sorted(['catalog', *engine._LAZY])}\n"
        "for name in engine.__all__:\n"
        "    value = getattr(engine, name)\n"
        "    home = engine._LAZY.get(name, 'app.training.catalog')\n"
        "    out['names'][name] = [not isinstance(value, types.ModuleType),"
        " value is getattr(importlib.import_module(home), name), name in dir(engine)]\n"
        "try:\n"
        "    engine.no_such_name\n"
        "except AttributeError:\n"
        "    out['unknown'] = 'AttributeError'\n"
        "from app.training import cache  # a submodule that is not a public name still imports\n"
        "out['submodule'] = isinstance(cache, types.ModuleType)\n"
        "print(json.dumps(out))\n")
    assert seen["callable"] == [True, True] and seen["listed"] is True
    assert {"train", "JobSpec", "dry_run", "TrainingError", "catalog"} <= set(seen["names"])
    assert {name: flags for name, flags in seen["names"].items() if flags != [True, True, True]} == {}
    assert seen["unknown"] == "AttributeError" and seen["submodule"] is True
