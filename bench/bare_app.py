"""The reference for bench/api_ratio.py: a bare FastAPI endpoint returning a job-sized JSON body."""

from fastapi import FastAPI

app = FastAPI()
BODY = {"id": "job_" + "0" * 32, "name": "bench", "status": "running", "progress": 0.5, "stage": "student",
        "metrics": {"stage": "student", "epoch": 3, "epochs": 30, "metrics": {"digit": 0.9}, "losses": {"total": 1.0}},
        "attempt": 1, "cancel_requested": False, "error": None, "spec": {"name": "bench"}, "spec_sha256": "0" * 64,
        "created_at": "2026-11-28T00:00:00Z", "started_at": None, "finished_at": None}


@app.get("/bare")
def bare() -> dict:
    return BODY
