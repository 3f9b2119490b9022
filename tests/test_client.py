"""The Python client against a real server: retries past 429s, typed results and errors, upload, follow."""

import io
import time
from pathlib import Path

import numpy as np
import pytest

from app.auth import create_api_key
from app.client import ApiError, Client
from app.config import Settings
from app.db import session_scope
from app.schemas import EventOut, FileOut, JobOut, ValidationSummary
from tests.conftest import tiny_spec
from tests.procs import api_argv, env_for, free_port, running, wait_http

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_client_rides_out_rate_limits_and_raises_typed_errors(settings: Settings, tmp_path: Path) -> None:
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    env = env_for(settings, DISTILLERY_RATE_LIMIT="4/second")
    with running(api_argv(port), env=env, log=tmp_path / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        with Client(f"http://127.0.0.1:{port}", key, backoff=0.2) as client:
            started = time.monotonic()
            job = client.submit(tiny_spec())
            assert isinstance(job, JobOut) and job.status == "queued" and job.spec["name"] == "tiny-digits"
            for _ in range(12):  # three times the limit: the client waits out each 429
                assert client.job(job.id).id == job.id
            assert time.monotonic() - started >= 1.5
            with pytest.raises(ApiError) as err:
                client.job("job_missing")
            assert err.value.status == 404 and err.value.code == "not_found"
            checked = client.validate(tiny_spec())
            assert isinstance(checked, ValidationSummary) and checked.summary["params"]["student"] > 0
            with pytest.raises(ApiError) as err:
                client.submit(tiny_spec(training={"epochs": 0}))
            assert err.value.status == 422 and err.value.problem["errors"][0]["field"] == "body.training.epochs"
            data = io.BytesIO()
            np.savez(data, x=np.zeros((5, 3), dtype="float32"))
            (tmp_path / "transfer.npz").write_bytes(data.getvalue())
            row = client.upload(tmp_path / "transfer.npz", purpose="transfer_set")
            assert isinstance(row, FileOut) and row.meta["arrays"]["x"]["shape"] == [5, 3]
            assert [f.id for f in client.files()] == [row.id]
            assert client.cancel(job.id).status == "cancelled"
            events = list(client.follow(job.id))  # the job has ended: the stream closes
            assert all(isinstance(e, EventOut) for e in events)
            assert [e.kind for e in events] == ["queued", "cancelled"]
            assert [e.seq for e in client.events(job.id).data] == [e.seq for e in events]
            assert client.wait(job.id, poll=0.1, timeout=5).status == "cancelled"
    assert " 429 " in api.output()
