"""Our signatures against the Standard Webhooks reference library (the `standardwebhooks` package)."""

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.webhooks.signing import new_secret, sign, signed_headers


def test_the_reference_library_verifies_our_headers_and_signs_the_same() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = json.dumps({"type": "job.succeeded", "timestamp": "2026-12-01T00:00:00Z", "data": {"job_id": "job_1"}})
    stamp = int(time.time())
    headers = signed_headers(secret=secret, msg_id="msg_1", timestamp=stamp, body=body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    reference = Webhook(secret).sign("msg_1", datetime.fromtimestamp(stamp, tz=UTC), body)
    assert sign(secret=secret, msg_id="msg_1", timestamp=stamp, body=body) == reference


@pytest.mark.parametrize("tamper", ["body", "id", "secret"])
def test_the_reference_library_refuses_a_tampered_message(tamper: str) -> None:
    secret, body = new_secret(), '{"type":"job.failed"}'
    headers = signed_headers(secret=secret, msg_id="msg_1", timestamp=int(time.time()), body=body)
    if tamper == "body":
        body = '{"type":"job.succeeded"}'
    elif tamper == "id":
        headers["webhook-id"] = "msg_2"
    else:
        secret = new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)
