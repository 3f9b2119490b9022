"""The container deployment (Dockerfile, .dockerignore, docker-compose.yml), checked without a Docker engine.

The compose file is parsed with PyYAML (with its ``${VAR:-default}`` defaults filled in as Compose would
with an empty environment) and its structure checked against what the architecture asks for; the
commands it runs are checked against the real ``distillery`` CLI; and, where a Compose validator is
on PATH (``docker compose`` or ``docker-compose``), it must accept the file.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HEALTHCHECK_SCRIPT = ROOT / "docker" / "healthcheck.py"

# ARCHITECTURE.md, "Processes and deployments": PostgreSQL, Redis broker, API, migrate (one-shot),
# GPU worker(s), Flower.
ARCHITECTURE_SERVICES = {"postgres", "redis", "migrate", "api", "worker", "flower"}
IMAGE_SERVICES = ("migrate", "api", "worker", "flower")  # run the Distillery image
DATA_DIR = "/data"


# ---------------------------------------------------------------------------------------------- helpers

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def _interpolate(text: str) -> str:
    """Fill ``${VAR}``, ``${VAR:-default}`` and ``$$`` as Compose does with none of the variables set."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("op") in (":-", "-"):
            return m.group("default") or ""
        return ""  # ${VAR}, ${VAR:?err}: unset

    return _VAR.sub(sub, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(_interpolate(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every service that runs `distillery worker` (the `worker` service and any per-GPU copies)."""
    return {name: svc for name, svc in services.items() if _command(svc)[:2] == ["distillery", "worker"]}


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return [str(part) for part in cmd] if isinstance(cmd, list) else str(cmd).split()


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """target path -> source (named volume or host path) for short and long volume syntax."""
    out = {}
    for vol in svc.get("volumes", []):
        if isinstance(vol, dict):
            out[vol["target"]] = vol.get("source", "")
        else:
            parts = vol.split(":")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
    return out


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _has_healthcheck(svc: dict[str, Any]) -> bool:
    hc = svc.get("healthcheck")
    return bool(hc) and not hc.get("disable") and hc.get("test") not in (None, ["NONE"], "NONE")


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration)):
        total += float(value) * units[unit]
    return total


def _gpu_devices(svc: dict[str, Any]) -> list[dict[str, Any]]:
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", [])]


def _distillery_argv() -> list[str]:
    """The `distillery` console script of the running interpreter's environment (falls back to the module)."""
    script = shutil.which("distillery", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    return subprocess.run([*_distillery_argv(), *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuation lines joined."""
    instructions, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            instructions.append((word.upper(), " ".join(rest.split())))
        buf = ""
    return instructions


def _dockerignore_regex(pattern: str) -> str:
    """Docker's .dockerignore glob: `*` and `?` stay within one path segment, `**` spans any number."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (a pattern may match a folder above it)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.removeprefix("!").strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


# ---------------------------------------------------------------------------------------------- compose


def test_compose_uses_the_compose_spec_without_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert set(compose) <= {"services", "volumes", "networks", "configs", "secrets", "name"} | {
        key for key in compose if key.startswith("x-")
    }


def test_every_service_of_the_architecture_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = ARCHITECTURE_SERVICES - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")


def test_image_services_share_one_image_built_from_the_repo(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name].get("image") for name in IMAGE_SERVICES}
    assert len(images) == 1 and None not in images, images
    for name in IMAGE_SERVICES:
        build = services[name].get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context == ".", f"{name} must build the repository's Dockerfile"


def test_worker_reserves_one_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = _gpu_devices(services["worker"])
    assert len(devices) == 1, "the worker must reserve a GPU through deploy.resources.reservations.devices"
    (gpu,) = devices
    assert gpu["driver"] == "nvidia"
    assert "gpu" in gpu["capabilities"]
    assert gpu.get("count") == 1 or len(gpu.get("device_ids", [])) == 1, "one GPU per worker"


def test_each_worker_service_gets_its_own_gpu(services: dict[str, dict[str, Any]]) -> None:
    """Docker maps `count: N` to devices 0..N-1, so per-GPU workers must not overlap; a multi-GPU
    worker (data-parallel jobs) reserves exactly its DISTILLERY_WORKER_DEVICES GPUs."""
    claimed: list[str] = []
    for name, svc in _workers(services).items():
        for gpu in _gpu_devices(svc):
            ids = [str(i) for i in gpu.get("device_ids", [])] or [str(i) for i in range(int(gpu.get("count", 0)))]
            devices = int(_env(svc).get("DISTILLERY_WORKER_DEVICES", 1))
            assert len(ids) == devices, f"{name}: one worker process per GPU, or per GPU set"
            assert "-c" in _command(svc) and _command(svc)[_command(svc).index("-c") + 1] == "1", name
            claimed += ids
    assert len(claimed) == len(set(claimed)), f"two worker services share a GPU: {claimed}"


def test_worker_has_time_for_its_soft_shutdown(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _workers(services).items():
        # The job is handed back within ~10 s of SIGTERM (worker_soft_shutdown_timeout); leave a margin.
        assert _seconds(svc.get("stop_grace_period", "10s")) >= 30, name


def test_services_run_cli_commands_that_exist(services: dict[str, dict[str, Any]]) -> None:
    expected = {"migrate": ["distillery", "migrate"], "api": ["distillery", "api"],
                "worker": ["distillery", "worker", "-c", "1"]}
    for name, argv in expected.items():
        assert _command(services[name]) == argv, name
    for name in ("migrate", "api", *_workers(services)):
        argv = _command(services[name])
        # Options are kept: click rejects an unknown option before it answers --help.
        result = _run_cli([*argv[1:], "--help"])
        assert result.returncode == 0, f"{name}: `{' '.join(argv)} --help` failed:\n{result.stdout}{result.stderr}"


def test_documented_key_command_exists() -> None:
    assert "docker compose exec api distillery keys create" in COMPOSE_FILE.read_text()
    result = _run_cli(["keys", "create", "--help"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_flower_runs_the_workers_celery_app(services: dict[str, dict[str, Any]]) -> None:
    argv = _command(services["flower"])
    assert argv[0] == "celery" and "flower" in argv
    app_spec = argv[argv.index("-A") + 1]
    module, _, attr = app_spec.partition(":")
    source = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    assert source.is_file(), f"flower -A {app_spec}: no {source}"
    names = {t.id for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    # `-A pkg.module` finds the module's Celery instance (here `celery_app`); `-A pkg.module:attr` names it.
    assert (attr or "celery_app") in names, f"{source} defines no {attr or 'celery_app'}"
    assert any("5555" in str(p) for p in services["flower"].get("ports", []))


def test_shared_data_volume_in_api_and_workers(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    api_mounts = _mounts(services["api"])
    assert DATA_DIR in api_mounts, "the api must mount the shared data volume on /data"
    volume = api_mounts[DATA_DIR]
    assert volume in (compose.get("volumes") or {}), f"{volume!r} must be a named volume"
    for name in _workers(services):
        assert _mounts(services[name]).get(DATA_DIR) == volume, f"{name} must mount {volume!r} on {DATA_DIR}"
    for name in ("api", *_workers(services)):
        assert _env(services[name]).get("DISTILLERY_DATA_DIR") == DATA_DIR, name


def test_named_volumes_for_postgres_and_redis(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    volumes = compose.get("volumes") or {}
    assert _mounts(services["postgres"]).get("/var/lib/postgresql/data") in volumes
    assert _mounts(services["redis"]).get("/data") in volumes


def test_production_settings_everywhere(services: dict[str, dict[str, Any]]) -> None:
    from app.config import Settings

    for name in IMAGE_SERVICES:
        env = _env(services[name])
        assert env.get("DISTILLERY_ENV") == "production", name
        assert env["DISTILLERY_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["DISTILLERY_DATABASE_URL"], name
        assert env["DISTILLERY_BROKER_URL"].startswith("redis://redis:6379/"), name
        # The production validator (no SQLite, no filesystem broker, no dev key) accepts it.
        settings = Settings(**{k.removeprefix("DISTILLERY_").lower(): v for k, v in env.items()})
        assert settings.env == "production"
    own = {"DISTILLERY_WORKER_DEVICES"}  # a worker's own device count (a multi-GPU worker)
    api = {k: v for k, v in _env(services["api"]).items() if k not in own}
    for name in _workers(services):
        env = {k: v for k, v in _env(services[name]).items() if k not in own}
        assert env == api, f"{name} and api must see the same settings"


def test_redis_persists_queued_messages(services: dict[str, dict[str, Any]]) -> None:
    cmd = _command(services["redis"])
    assert "--appendonly" in cmd and cmd[cmd.index("--appendonly") + 1] == "yes"


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "redis", "api"):
        assert _has_healthcheck(services[name]), f"{name} needs a healthcheck"
    assert "pg_isready" in " ".join(map(str, services["postgres"]["healthcheck"]["test"]))
    assert "ping" in services["redis"]["healthcheck"]["test"]
    api_test = [str(p) for p in services["api"]["healthcheck"]["test"]]
    assert any("/readyz" in p for p in api_test)
    assert "curl" not in " ".join(api_test), "python:slim has no curl"
    assert "/app/docker/healthcheck.py" in api_test and HEALTHCHECK_SCRIPT.is_file()


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    assert _depends(services["migrate"]).get("postgres") == "service_healthy"
    assert services["migrate"].get("restart") in ("no", False), "migrate is one-shot"
    api = _depends(services["api"])
    assert api.get("migrate") == "service_completed_successfully"
    assert api.get("redis") == "service_healthy"
    for name in _workers(services):
        deps = _depends(services[name])
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("redis") == "service_healthy", name
    assert "redis" in _depends(services["flower"])
    for name, svc in services.items():  # a service_healthy dependency needs a healthcheck to wait for
        for dep, condition in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert _has_healthcheck(services[dep]), f"{name} waits for {dep} to be healthy, which has no healthcheck"


def test_api_port_published(services: dict[str, dict[str, Any]]) -> None:
    assert any(str(p).endswith(":8000") for p in services["api"].get("ports", []))


def _compose_validators() -> list[list[str]]:
    found = []
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


def test_compose_validator_accepts_the_file(tmp_path: Path) -> None:
    validators = _compose_validators()
    if not validators:
        pytest.skip("no Compose validator on PATH (`docker compose` plugin or `docker-compose`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env["HOME"] = str(tmp_path)  # no user config; `config` never needs the engine
    for tool in validators:
        result = subprocess.run([*tool, "-f", str(COMPOSE_FILE), "config", "-q"], check=False, cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"`{' '.join(tool)} config -q` failed:\n{result.stdout}{result.stderr}"


# ---------------------------------------------------------------------------------------------- image


def test_dockerfile_installs_torch_before_the_project() -> None:
    steps = _dockerfile_instructions()
    runs = [(i, args) for i, (word, args) in enumerate(steps) if word == "RUN"]
    torch_step = next(i for i, args in runs if re.search(r"pip install .*[\"']?torch==", args))
    assert "--index-url" in steps[torch_step][1] and "TORCH_INDEX_URL" in steps[torch_step][1]
    deps_step = next(i for i, args in runs if "requirements" in args and "pip install" in args)
    project_step = next(i for i, args in runs if re.search(r"pip install .*(-e \.|\s\.)(\s|$)", args))
    assert torch_step < deps_step < project_step
    assert "--no-deps" in steps[project_step][1], "installing the project must not pull another torch"
    assert "flower" in steps[deps_step][1]
    args = {a.split("=", 1)[0] for w, a in steps if w == "ARG"}
    assert {"TORCH_INDEX_URL", "TORCH_VERSION"} <= args
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE.read_text(), "document the CPU-only build"
    # Layer caching: the dependencies come from pyproject.toml alone, copied before the source.
    copies = [i for i, (w, a) in enumerate(steps) if w == "COPY"]
    assert steps[copies[0]][1].startswith("pyproject.toml") and copies[0] < deps_step < copies[1] < project_step


def test_dockerfile_keeps_migrations_and_alembic_ini_in_the_image() -> None:
    steps = _dockerfile_instructions()
    assert ("WORKDIR", "/app") in steps
    copied = " ".join(a for w, a in steps if w == "COPY")
    assert re.search(r"(^|\s)\. \.(\s|$)", copied) or ("alembic.ini" in copied and "migrations" in copied)
    project_step = next(a for w, a in steps if w == "RUN" and "--no-deps" in a)
    assert "-e ." in project_step, "editable install: app/cli/serve.py finds migrations/ next to the package"
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for path in ("alembic.ini", "migrations/env.py", "migrations/versions", "pyproject.toml", "app/cli/serve.py",
                 "worker/celery_app.py", "docker/healthcheck.py"):
        assert (ROOT / path).exists(), path
        assert not _dockerignored(path, patterns), f".dockerignore drops {path}"
    for path in (".git", ".venv", "app/__pycache__", "distillery.egg-info"):
        assert _dockerignored(path, patterns), f".dockerignore should drop {path}"


def test_dockerfile_runtime_setup() -> None:
    steps = _dockerfile_instructions()
    words = [w for w, _ in steps]
    env = " ".join(a for w, a in steps if w == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "DISTILLERY_HOST=0.0.0.0", "DISTILLERY_DATA_DIR=/data"):
        assert setting in env, setting
    user = [a for w, a in steps if w == "USER"]
    assert user and user[-1] not in ("root", "0"), "run as a non-root user"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "no RUN after USER"
    healthcheck = next(a for w, a in steps if w == "HEALTHCHECK")
    assert "python" in healthcheck and "curl" not in healthcheck
    # The base is the official Python image unless a build argument says otherwise (the smoke test's
    # local stand-in, deploy/compose-smoke.sh): the default is what users get.
    from_index = words.index("FROM")
    base = steps[from_index][1]
    if base.startswith("${"):
        arg = base.strip("${}")
        defaults = dict(a.split("=", 1) for w, a in steps[:from_index] if w == "ARG" and "=" in a)
        base = defaults.get(arg, "")
    assert base.startswith("python:3.11"), base
    assert all(w == "ARG" for w in words[:from_index])
    assert any(w == "CMD" and "distillery" in a for w, a in steps)


def test_healthcheck_script_exit_codes() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        env = {**os.environ, "DISTILLERY_PORT": str(port)}

        def check(*args: str) -> int:
            return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), *args], check=False, env=env,
                                  capture_output=True, timeout=30).returncode

        assert check() == 0  # default: /healthz on DISTILLERY_PORT
        assert check("/readyz") == 1  # 503
        assert check(f"http://127.0.0.1:{port}/healthz") == 0
    finally:
        server.shutdown()
        server.server_close()
    assert check("/healthz") == 1  # nothing listening
