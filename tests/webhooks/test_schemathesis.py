"""Schemathesis over the webhook operations: random input, and input on a real endpoint and delivery."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.services.lifecycle import claim_job
from tests.webhooks.conftest import api_key, insert_job

EXAMPLES_PER_OPERATION = 30


@pytest.mark.slow
def test_webhook_operations_give_no_server_error(hook_settings: Settings) -> None:
    headers, tenant_id = api_key(hook_settings, "fuzz")
    app = create_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # DELETE last, so the other operations meet the real endpoint while it exists.
    operations = sorted((op for op in operations if op.path.startswith("/v1/webhooks")),
                        key=lambda op: op.method.upper() == "DELETE")
    assert len(operations) == 7

    from fastapi.testclient import TestClient

    client = TestClient(app)
    hook = client.post("/v1/webhooks", headers=headers,
                       json={"url": "http://127.0.0.1:9/x", "event_types": ["job.started"]}).json()
    with session_scope(hook_settings.resolved_database_url) as db:  # one delivery in the log
        claim_job(db=db, job_id=insert_job(hook_settings, tenant_id), owner="fuzz")
    [delivery] = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=headers).json()["data"]

    def checker(operation, real_ids: bool):
        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                             derandomize=True, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            if real_ids and case.path_parameters:
                case.path_parameters.update({"webhook_id": hook["id"]})
                if "delivery_id" in case.path_parameters:
                    case.path_parameters["delivery_id"] = delivery["id"]
            # A random but well-formed URL may rightly be refused (it does not resolve): skip that check.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        return check

    for operation in operations:
        for real_ids in (False, True):
            checker(operation, real_ids)()
