"""Schemathesis on the search operations with a real search's id in the path (the API-wide run in
tests/api/test_schemathesis.py mostly draws ids that do not exist, so it reaches the 404 only)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.auth import create_api_key
from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.models import Search
from app.services.searches import add_search_event
from tests.searches.conftest import tiny_goal

EXAMPLES_PER_OPERATION = 25


def _ended_search(settings: Settings) -> tuple[dict[str, str], str]:
    """A fuzz tenant's key and a search of its that has ended (so its stream ends too)."""
    from app.search_schemas import SearchCreate

    with session_scope(settings.resolved_database_url) as db:
        key, plain = create_api_key(db=db, tenant_name="fuzz-searches")
        request = SearchCreate.model_validate(tiny_goal()).model_dump(mode="json")
        search = Search(tenant_id=key.tenant_id, name="fuzzed", request=request, status="cancelled")
        db.add(search)
        db.flush()
        for kind in ("queued", "cancel_requested", "cancelled"):
            add_search_event(db=db, search_id=search.id, kind=kind, data={})
        db.commit()
        return {"Authorization": f"Bearer {plain}"}, search.id


@pytest.mark.slow
def test_search_operations_on_a_real_search_give_no_server_error(settings: Settings) -> None:
    headers, search_id = _ended_search(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    operations = [op for op in (r.ok() for r in schema.get_all_operations()) if op.path.startswith("/v1/searches")]
    assert len(operations) == 8  # POST and GET /v1/searches, get, cancel, events, stream, artifacts, one artifact
    seen: dict[str, set[int]] = {}

    for operation in operations:
        name = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            if case.path_parameters and "search_id" in case.path_parameters:
                case.path_parameters["search_id"] = search_id
            response = case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
            seen.setdefault(name, set()).add(response.status_code)  # noqa: B023 (called below, in this round)

        check()
    # The real search was reached, not only a 404: its get, events, stream and artifact list answered.
    for path in ("", "/events", "/events/stream", "/artifacts"):
        assert 200 in seen[f"GET /v1/searches/{{search_id}}{path}"], seen
    assert 409 in seen["POST /v1/searches/{search_id}/cancel"], seen  # it has ended
