"""Recovery from a killed job process: SIGKILL the pool process running a job, time it to `running` again.

    .venv/bin/python -m bench.recovery [--backend embedded|postgres|both] [--kills 5]

For each backend a throwaway stack (API + one worker, bench/_stack.py) runs one long digits job
submitted over HTTP. The job's process (its pid is in the job's lease owner, host:pid:rand) is
killed `--kills` times, each time a second after the job is running again. The heartbeat and the
reaper keep their defaults (stale after 60 s), so only the worker's main process can requeue it in
time. Times come from the database's own stamps against the wall clock at the kill: the
`requeued` event (the job handed back) and `started_at` of the next attempt (claimed: `running`).
After each recovery the worker's main process must have exactly one pool process and no zombie.
"""

import argparse
import json
import os
import signal
import statistics
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench._stack import child_pids, stack

SPEC = {
    "name": "recovery-bench",
    "dataset": {"builtin": "digits-mt"},
    "tasks": [{"name": "digit", "kind": "multiclass", "num_classes": 10},
              {"name": "parity", "kind": "multiclass", "num_classes": 2},
              {"name": "large", "kind": "binary"}],
    "teachers": [{"name": "t", "tasks": ["digit", "parity", "large"],
                  "source": {"train": {"arch": {"type": "mlp", "hidden": [64]}, "epochs": 2}}}],
    "student": {"type": "mlp", "trunk": [16], "head": []},
    "training": {"epochs": 400, "batch_size": 32, "lr": 0.003, "seed": 0},
    "baseline": False,
    "export": ["safetensors"],
}


def _job(db_url: str, job_id: str) -> tuple[str, int, str | None, datetime | None, list[tuple[str, dict, datetime]]]:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Job, JobEvent

    with session_scope(db_url) as db:
        job = db.get(Job, job_id)
        events = [(e.kind, e.data, e.created_at) for e in
                  db.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))]
        return job.status, job.attempt, job.lease_owner, job.started_at, events


def _running(db_url: str, job_id: str, attempt: int) -> bool:
    status, current, *_ = _job(db_url, job_id)
    return status == "running" and current == attempt


def _ended(db_url: str, job_id: str) -> str | None:
    status = _job(db_url, job_id)[0]
    return status if status in ("succeeded", "failed") else None


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"no {what} within {timeout:.0f} s")


def _zombies(pid: int) -> list[int]:
    found = []
    for child in child_pids(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] == "Z":
            found.append(child)
    return found


def measure(backend: str, kills: int) -> dict:
    env = {"DISTILLERY_MAX_ATTEMPTS": str(kills + 2), "DISTILLERY_TORCH_THREADS": "1",
           "DISTILLERY_ENV": "development"}
    with stack(backend=backend, extra_env=env) as s:
        db_url = s.env["DISTILLERY_DATABASE_URL"]
        headers = {"Authorization": f"Bearer {s.key}"}
        job_id = httpx.post(f"{s.url}/v1/jobs", json=SPEC, headers=headers, timeout=120).json()["id"]
        rows = []
        for attempt in range(1, kills + 1):
            _wait(lambda a=attempt: _running(db_url, job_id, a), 120, f"attempt {attempt} running")
            time.sleep(1.0)  # let it train a little: the kill lands mid-epoch
            status, _, owner, _, _ = _job(db_url, job_id)
            assert status == "running", status
            pid = int(owner.split(":")[1])
            main = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
            killed_at = datetime.now().astimezone()
            os.kill(pid, signal.SIGKILL)
            polled = time.monotonic()
            _wait(lambda a=attempt: _running(db_url, job_id, a + 1), 120, f"attempt {attempt + 1} running")
            polled = time.monotonic() - polled
            _, _, _, started_at, events = _job(db_url, job_id)
            handed = [(data, at) for kind, data, at in events if kind == "requeued"][-1]
            pool = _wait(lambda m=main, p=pid: [c for c in child_pids(m) if c != p] or None, 10, "a new pool process")
            rows.append({"kill": attempt, "reason": handed[0]["reason"], "exit": handed[0].get("exit"),
                         "to_queued_s": round((handed[1] - killed_at).total_seconds(), 3),
                         "to_running_s": round((started_at - killed_at).total_seconds(), 3),
                         "to_running_polled_s": round(polled, 3),
                         "pool_processes": len(pool), "zombies": len(_zombies(main)),
                         "killed_pid_alive": Path(f"/proc/{pid}").exists()})
        final = _wait(lambda: _ended(db_url, job_id), 600, "the job's end")
    running = [r["to_running_s"] for r in rows]
    return {"backend": backend, "kills": rows, "final_status": final,
            "p50_to_running_s": round(statistics.median(running), 3), "max_to_running_s": max(running),
            "p50_to_queued_s": round(statistics.median(r["to_queued_s"] for r in rows), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "postgres", "both"], default="both")
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    backends = ["embedded", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        load = os.getloadavg()
        result = measure(backend, args.kills)
        result["load_before"] = [round(x, 2) for x in load]
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
