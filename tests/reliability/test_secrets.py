"""No API key or database password reaches the API's or the worker's log, in text or JSON lines."""

from pathlib import Path

import pytest

from app.auth import create_api_key
from app.client import Client
from app.config import Settings
from app.db import session_scope
from tests.conftest import tiny_spec
from tests.observability.conftest import broker_env  # noqa: F401  (a private Redis, not the shared one)
from tests.observability.test_logs import stray_lines
from tests.procs import api_argv, env_for, free_port, running, wait_http, worker_argv

pytestmark = pytest.mark.slow
PASSWORD = "s3cret-Pa55word"


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_keys_and_passwords_stay_out_of_logs(settings: Settings, tmp_path: Path, log_format: str,
                                             broker_env: dict) -> None:  # noqa: F811
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    # trust auth ignores the password, so the URL works while carrying a secret to look for
    url = settings.resolved_database_url.replace("postgres@", f"postgres:{PASSWORD}@")
    env = env_for(settings, DISTILLERY_DATABASE_URL=url, DISTILLERY_LOG_FORMAT=log_format,
                  DISTILLERY_LOG_LEVEL="DEBUG" if log_format == "json" else "INFO", **broker_env)
    port = free_port()
    with running(api_argv(port), env=env, log=tmp_path / "api.log") as api, \
            running(worker_argv("secrets"), env=env, log=tmp_path / "worker.log") as worker:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        with Client(f"http://127.0.0.1:{port}", key) as client:
            job = client.wait(client.submit(tiny_spec()).id, poll=0.5, timeout=120)
            assert job.status == "succeeded"
            with pytest.raises(Exception):
                Client(f"http://127.0.0.1:{port}", key + "x").job(job.id)  # a failed auth is logged too
    logs = api.output() + worker.output()
    assert "GET /v1/jobs" in logs  # the access log is there, and
    if log_format == "json":  # the lines really are JSON, with the job's id on the worker's
        assert f'"job_id": "{job.id}"' in worker.output()
        assert not stray_lines(api.output())
    assert key not in logs and PASSWORD not in logs
