"""The status request's fast path keeps its guarantees: fresh auth, rate limits, few statements, no
open transaction for reads, and transactions still for writes."""

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.auth import create_api_key
from app.config import Settings, get_settings
from app.db import get_engine, session_scope
from app.main import create_app


@pytest.fixture
def statements(settings: Settings) -> Iterator[list[tuple[str, Any]]]:
    """Record (SQL, isolation_level execution option) of every statement the app runs."""
    seen: list[tuple[str, Any]] = []
    engine = get_engine(settings.resolved_database_url)

    def record(conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        seen.append((statement, conn.get_execution_options().get("isolation_level")))

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_status_is_two_statements_in_autocommit(client: TestClient, auth: dict, spec: dict,
                                                statements: list[tuple[str, Any]]) -> None:
    job = client.post("/v1/jobs", json=spec, headers=auth).json()
    writes = list(statements)
    assert writes and all(level != "AUTOCOMMIT" for _, level in writes)  # a submit stays one transaction
    statements.clear()
    r = client.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert r.status_code == 200 and r.json() == job  # the same body the submit returned
    sql = [(s.split()[0], re.search(r"\bFROM\s+(\w+)", s).group(1)) for s, _ in statements]  # type: ignore[union-attr]
    assert sql == [("SELECT", "api_keys"), ("SELECT", "jobs")]  # key and tenant in one query, then the job
    assert all(level == "AUTOCOMMIT" for _, level in statements)


def test_revoked_key_fails_on_the_status_route_at_once(client: TestClient, settings: Settings, spec: dict) -> None:
    with session_scope(settings.resolved_database_url) as db:
        row, plain = create_api_key(db=db, tenant_name="acme")
        admin = {"Authorization": f"Bearer {create_api_key(db=db, tenant_name='ops', is_admin=True)[1]}"}
    auth = {"Authorization": f"Bearer {plain}"}
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert client.post(f"/v1/keys/{row.id}/revoke", headers=admin).status_code == 200
    r = client.get(f"/v1/jobs/{job_id}", headers=auth)  # the very next request, no grace period
    assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"


def test_status_route_is_rate_limited(settings: Settings, monkeypatch: pytest.MonkeyPatch, auth: dict,
                                      spec: dict) -> None:
    monkeypatch.setenv("DISTILLERY_RATE_LIMIT", "3/minute")
    get_settings.cache_clear()
    client = TestClient(create_app(), raise_server_exceptions=False)
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    codes = [client.get(f"/v1/jobs/{job_id}", headers=auth).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # the submit counted as the first of three
    assert int(client.get(f"/v1/jobs/{job_id}", headers=auth).headers["retry-after"]) >= 1
