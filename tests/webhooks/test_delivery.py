"""Deliveries through a real webhook worker to a real receiver process that checks each signature."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from app.db import session_scope
from app.models import Job
from app.services.jobs import request_cancel
from app.services.lifecycle import claim_job, finish_job
from tests.procs import Proc, env_for, free_port, running, wait_until
from tests.webhooks.conftest import (
    FAST_RETRIES,
    api_key,
    insert_job,
    webhook_worker_argv,
)


def _run_job(settings: Settings, job_id: str, status: str) -> None:
    """Drive a job row through the worker's own lifecycle calls: claim, then end it."""
    with session_scope(settings.resolved_database_url) as db:
        assert claim_job(db=db, job_id=job_id, owner="test-worker") is not None
        extra: dict[str, Any] = {"error_code": "bad_data", "error_message": "no rows"} if status == "failed" else {}
        assert finish_job(db=db, job_id=job_id, owner="test-worker", status=status, **extra)


def _deliveries(api: TestClient, headers: dict[str, str], hook_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/webhooks/{hook_id}/deliveries", headers=headers, params={"limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_a_500_is_retried_with_the_same_id_and_a_redelivery_keeps_it(
        api: TestClient, hook_settings: Settings, webhook_worker: Proc, receiver: Callable) -> None:
    headers, tenant_id = api_key(hook_settings, "acme")
    port = free_port()
    hook = api.post("/v1/webhooks", headers=headers, json={"url": f"http://127.0.0.1:{port}/hooks",
                                                            "event_types": ["job.succeeded"]}).json()
    job_id = insert_job(hook_settings, tenant_id)
    with receiver(port, hook["secret"], fail_first=2) as rx:
        _run_job(hook_settings, job_id, "succeeded")
        wait_until(lambda: len(rx.records()) >= 3, timeout=60, what="two 500s and a success")
        records = rx.records()
        assert [r["answered"] for r in records] == [500, 500, 204]
        assert all(r["signature_ok"] for r in records), records
        assert len({r["id"] for r in records}) == 1  # every attempt carries the same webhook-id
        body = records[0]["body"]
        assert body["type"] == "job.succeeded" and body["data"]["job_id"] == job_id
        assert body["data"]["status"] == "succeeded" and body["data"]["name"] == "tiny-digits"
        assert all(r["body"] == body for r in records)  # the same bytes every time

        [delivery] = wait_until(lambda: [d for d in _deliveries(api, headers, hook["id"])
                                         if d["status"] == "succeeded"], timeout=20, what="the log")
        assert delivery["id"] == records[0]["id"] and delivery["attempts"] == 3
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 204]
        assert delivery["last_status_code"] == 204 and delivery["delivered_at"] is not None

        again = api.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=headers)
        assert again.status_code == 202, again.text
        wait_until(lambda: len(rx.records()) >= 4, timeout=30, what="the redelivery")
        redelivered = rx.records()[3]
        assert redelivered["id"] == delivery["id"] and redelivered["signature_ok"] and redelivered["body"] == body

        # After a rotation the old secret no longer verifies: attempts are signed with the new one.
        api.post(f"/v1/webhooks/{hook['id']}/rotate", headers=headers)
        api.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=headers)
        wait_until(lambda: len(rx.records()) >= 5, timeout=30, what="the redelivery after rotation")
        assert rx.records()[4]["id"] == delivery["id"] and rx.records()[4]["signature_ok"] is False
    assert {r["id"] for r in rx.records()} == {delivery["id"]}


def test_a_receiver_down_for_a_while_then_up_loses_nothing(
        api: TestClient, hook_settings: Settings, webhook_worker: Proc, receiver: Callable) -> None:
    headers, tenant_id = api_key(hook_settings, "acme")
    port = free_port()
    hook = api.post("/v1/webhooks", headers=headers, json={
        "url": f"http://127.0.0.1:{port}/hooks",
        "event_types": ["job.started", "job.succeeded", "job.failed", "job.cancelled"]}).json()
    jobs = {status: insert_job(hook_settings, tenant_id) for status in ("succeeded", "failed")}
    for status, job_id in jobs.items():
        _run_job(hook_settings, job_id, status)
    queued = insert_job(hook_settings, tenant_id)
    with session_scope(hook_settings.resolved_database_url) as db:  # cancel while queued, as the API does
        job = db.get(Job, queued)
        assert job is not None
        request_cancel(db=db, job=job)
    expected = {("job.started", jobs["succeeded"]), ("job.succeeded", jobs["succeeded"]),
                ("job.started", jobs["failed"]), ("job.failed", jobs["failed"]), ("job.cancelled", queued)}

    # Nobody listens: every delivery fails at least twice (connection refused) and stays pending.
    def all_failed_twice() -> bool:
        deliveries = _deliveries(api, headers, hook["id"])
        return len(deliveries) == 5 and all(d["attempts"] >= 2 for d in deliveries)

    wait_until(all_failed_twice, timeout=60, what="failed attempts while the receiver is down")
    down = _deliveries(api, headers, hook["id"])
    assert all(d["status"] == "pending" and d["last_status_code"] is None and d["last_error"] for d in down)

    with receiver(port, hook["secret"]) as rx:
        wait_until(lambda: all(d["status"] == "succeeded" for d in _deliveries(api, headers, hook["id"])),
                   timeout=60, what="every delivery once the receiver is up")
        records = rx.records()
    assert {(r["body"]["type"], r["body"]["data"]["job_id"]) for r in records} == expected
    assert {r["id"] for r in records} == {d["id"] for d in down}
    assert all(r["signature_ok"] for r in records)
    failed = next(r["body"]["data"] for r in records if r["body"]["type"] == "job.failed")
    assert failed["error"] == {"code": "bad_data", "message": "no rows"}


def test_a_private_target_is_refused_again_at_send_time(
        api: TestClient, hook_settings: Settings, receiver: Callable, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint accepted while private targets were allowed is not called by a worker that refuses them."""
    monkeypatch.setenv("DISTILLERY_WEBHOOK_RETRY_HORIZON_SECONDS", "2")  # set when the event is recorded
    get_settings.cache_clear()
    headers, tenant_id = api_key(hook_settings, "acme")
    port = free_port()
    hook = api.post("/v1/webhooks", headers=headers, json={"url": f"http://127.0.0.1:{port}/hooks",
                                                            "event_types": ["job.succeeded"]}).json()
    env = env_for(hook_settings, **{**FAST_RETRIES, "DISTILLERY_WEBHOOK_ALLOW_PRIVATE": "false",
                                    "DISTILLERY_WEBHOOK_RETRY_HORIZON_SECONDS": "2"})
    with receiver(port, hook["secret"]) as rx, \
            running(webhook_worker_argv("strict"), env=env, log=tmp_path / "strict.log") as worker:
        wait_until(lambda: " ready." in worker.output(), timeout=90, what="the webhook worker")
        _run_job(hook_settings, insert_job(hook_settings, tenant_id), "succeeded")
        [delivery] = wait_until(lambda: [d for d in _deliveries(api, headers, hook["id"]) if d["status"] == "failed"],
                                timeout=60, what="the delivery to give up")
        assert rx.records() == []
    assert delivery["attempts"] >= 1 and delivery["last_status_code"] is None
    assert all(a["error"].startswith("refused: ") and "127.0.0.1" in a["error"] for a in delivery["attempt_log"])
