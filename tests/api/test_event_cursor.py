"""`after` on the event lists and streams is an event number: past the seq column's range it is a 422, not a 500."""

from fastapi.testclient import TestClient

from app.auth import authenticate_key
from app.config import Settings
from app.db import session_scope
from app.models import Job, Search
from app.services.events import add_event
from app.services.searches import add_search_event


def _rows(settings: Settings, auth: dict[str, str]) -> tuple[str, str]:
    with session_scope(settings.resolved_database_url) as db:
        tenant_id = authenticate_key(db=db, plain_key=auth["Authorization"].split()[1]).tenant_id
        job = Job(tenant_id=tenant_id, name="cursor", spec={}, spec_sha256="0" * 64)
        search = Search(tenant_id=tenant_id, name="cursor", request={}, status="cancelled")
        db.add_all([job, search])
        db.flush()
        add_event(db=db, job_id=job.id, kind="queued")
        add_search_event(db=db, search_id=search.id, kind="queued")
        db.commit()
        return job.id, search.id


def test_an_after_past_the_event_numbers_is_a_422(settings: Settings, client: TestClient, auth: dict[str, str]) -> None:
    job_id, search_id = _rows(settings, auth)
    for path in (f"/v1/jobs/{job_id}/events", f"/v1/searches/{search_id}/events",
                 f"/v1/searches/{search_id}/events/stream"):
        too_far = client.get(path, params={"after": 2**63}, headers=auth)
        assert too_far.status_code == 422, (path, too_far.text)
        assert too_far.json()["errors"][0]["field"] == "query.after"
    last = client.get(f"/v1/jobs/{job_id}/events", params={"after": 2**31 - 1}, headers=auth)
    assert last.status_code == 200 and last.json()["data"] == []
    assert [e["seq"] for e in client.get(f"/v1/searches/{search_id}/events", headers=auth).json()["data"]] == [1]
