"""The compose smoke test's harness (deploy/) stays apart from what users run.

deploy/compose-smoke.sh builds the real Dockerfile on a local Debian base and runs the real
docker-compose.yml through the override deploy/compose.smoke.yml (this machine reaches no image
registry and has no GPU). These checks keep the product free of the harness: the production compose
file never names the test images, the Dockerfile's default base is the official Python image, and the
CA bundle the harness hands to pip is a build secret, never a file copied into a layer. Where Compose
v2 is on PATH, the merged configuration is checked too: it is what the smoke test really starts.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "deploy" / "compose.smoke.yml"

def _image_services() -> set[str]:
    """Services of docker-compose.yml that run the Distillery image (they build the repository)."""
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(re.sub(r"\$\{[^}]*\}", "x", text))["services"]
    return {name for name, svc in services.items() if svc.get("build")}


IMAGE_SERVICES = sorted(_image_services())


def _dockerfile_runs() -> list[str]:
    text = re.sub(r"\\\n", " ", ROOT.joinpath("Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip().startswith("RUN ")]


def test_production_compose_file_does_not_know_the_harness() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "distillery-smoke" not in text
    assert "compose.smoke" not in text
    assert "BASE_IMAGE" not in text, "users build on the Dockerfile's default base"


def test_ca_bundle_reaches_pip_only_as_a_build_secret() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.strip().upper().startswith(("COPY", "ADD")):
            assert not re.search(r"\.(crt|pem)\b|ca-certificates|pip_cert", line), line
    assert not re.search(r"^\s*(ENV|ARG)\s+.*PIP_CERT", text, re.MULTILINE), "PIP_CERT must not persist in the image"
    pip_runs = [run for run in _dockerfile_runs() if "pip install" in run]
    assert len(pip_runs) >= 3  # torch, the dependencies, the project
    for run in pip_runs:
        assert run.startswith("RUN --mount=type=secret,id=pip_cert"), run


def test_override_only_swaps_images_build_inputs_gpu_and_ports() -> None:
    override = yaml.safe_load(OVERRIDE.read_text().replace("!reset", "").replace("!override", ""))
    services = override["services"]
    assert {"migrate", "api", "worker", "flower"} <= set(IMAGE_SERVICES)
    # Every service that builds the image is retagged, or `up` would build the production image
    # (CUDA torch from the internet) for the one left out.
    assert set(services) == {"postgres", "redis", *IMAGE_SERVICES}
    for name in IMAGE_SERVICES:
        assert services[name]["image"].startswith("distillery-smoke/"), "never overwrite a user's distillery:latest"
        build = services[name]["build"]
        assert build["args"]["BASE_IMAGE"].startswith("distillery-smoke/python:")
        assert build["secrets"] == ["pip_cert"]
    allowed = {"image", "build", "ports", "deploy"}
    for name, svc in services.items():
        assert set(svc) <= allowed, f"{name}: the override changes {sorted(set(svc) - allowed)}"
    for name in ("api", "flower"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), name


def _compose_v2() -> list[str] | None:
    if not shutil.which("docker"):
        return None
    probe = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True,
                           timeout=60, check=False)
    return ["docker", "compose"] if probe.returncode == 0 and probe.stdout.strip()[:1] == "2" else None


def _merged_config(tmp_path: Path) -> dict[str, Any]:
    tool = _compose_v2()
    if tool is None:
        pytest.skip("Compose v2 (`docker compose`) is not on PATH; the override's !reset needs it")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.update(HOME=str(tmp_path), SMOKE_TORCH_INDEX_URL="http://127.0.0.1:1/simple")
    result = subprocess.run([*tool, "-p", "distillery-smoke", "-f", "docker-compose.yml", "-f", str(OVERRIDE),
                             "config", "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_merged_smoke_configuration(tmp_path: Path) -> None:
    config = _merged_config(tmp_path)
    services = config["services"]
    worker = services["worker"]
    assert not (worker.get("deploy") or {}).get("resources"), "the smoke worker must not reserve a GPU"
    assert worker["command"] == ["distillery", "worker", "-c", "1"]
    assert worker["init"] is True
    assert services["postgres"]["image"].startswith("distillery-smoke/postgres")
    assert services["api"]["ports"][0]["host_ip"] == "127.0.0.1"
    # Everything else is the production file's: settings, volumes, healthchecks, start order.
    prod = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    # `config` leaves out the services of profiles not asked for (worker-2gpu: multi-gpu).
    profiled = {name for name, svc in prod["services"].items() if svc.get("profiles")}
    assert set(IMAGE_SERVICES) - set(services) <= profiled
    for name in set(IMAGE_SERVICES) & set(services):
        assert services[name]["image"] == "distillery-smoke/distillery:latest", name
    for name in ("migrate", "api", "worker", "flower"):
        assert set(services[name]["environment"]) == set(prod["x-distillery-env"]), name
        assert services[name]["depends_on"].keys() == (prod["services"][name].get("depends_on") or
                                                         prod["x-worker"]["depends_on"]).keys(), name
    assert config["secrets"]["pip_cert"]["file"].endswith(".crt") or "SMOKE_PIP_CERT" in os.environ
