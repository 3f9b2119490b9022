"""Searches: TPE against random search at equal trials, and the controller's cost over its trials.

    .venv/bin/python -m bench.search [--trials 24] [--seeds 0 1 2] [--datasets digits-mt mnist1d-mt]
                                      [--out bench-search.jsonl] [--samplers tpe random]
                                      [--student-epochs 4] [--transfer-rows 2000]

The defaults are the comparison of samplers (small trials: a student stage of 0.1-2 s). The cost
of a search's machinery shows against longer trials with --student-epochs and --transfer-rows
(MNIST-1D's generated transfer set), e.g. `--datasets mnist1d-mt --seeds 0 --samplers random
--trials 8 --student-epochs 20 --transfer-rows 20000`.

One embedded stack (SQLite, filesystem broker) with two Celery workers (-c 1 each, one torch
thread). For each seed, dataset and sampler it submits one search over HTTP: maximise the mean
validation retention and minimise the student's parameters, under max_params = PARAM_CAP. Each
finished search is appended to --out as one JSON line (a partial run keeps what finished), then
the table is printed:
  - hypervolume of the feasible trials in (mean retention, params), reference (0, PARAM_CAP):
    the area of (retention, params) pairs some feasible trial dominates;
  - best feasible mean retention (validation);
  - cost: the search's wall time (controller start to end) over the sum of its trials'
    student-stage seconds (results.json stages), and over half that sum (two workers); the wall
    includes the front trials' finalise jobs (test evaluation and exports of the light trials'
    students), also reported alone as finalise_seconds.
Teachers train once per dataset: the first search pays for them (its first trial), later ones hit
the weights and output caches, as a search's later trials do.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

from app.services.searches_study import hypervolume_2d
from bench._stack import ROOT, stack

PARAM_CAP = 4000
SPACE = {
    "student.trunk": {"choices": [[4], [8], [16], [32], [64], [8, 8], [16, 16], [32, 32]]},
    "student.head": {"choices": [[], [8]]},
    "distillation.temperature": {"low": 1.0, "high": 8.0, "log": True},
    "distillation.alpha": {"low": 0.1, "high": 0.95},
    "training.lr": {"low": 0.001, "high": 0.03, "log": True},
}
TASKS = {
    "digits-mt": [{"name": "digit", "kind": "multiclass", "num_classes": 10},
                  {"name": "parity", "kind": "multiclass", "num_classes": 2},
                  {"name": "large", "kind": "binary"}],
    "mnist1d-mt": [{"name": "digit", "kind": "multiclass", "num_classes": 10},
                   {"name": "parity", "kind": "multiclass", "num_classes": 2}],
}


SIZES = {"student_epochs": 4, "transfer_rows": 2000}  # --student-epochs, --transfer-rows


def base_spec(dataset: str) -> dict:
    """A small base: one trained-in-job teacher (trained once), a student trained for 4 epochs."""
    teacher_arch = ({"type": "cnn1d", "channels": [16, 32], "trunk": [64]} if dataset == "mnist1d-mt"
                    else {"type": "mlp", "hidden": [128]})
    spec = {
        "name": f"bench-{dataset}", "dataset": {"builtin": dataset}, "tasks": TASKS[dataset],
        "teachers": [{"name": "teacher", "tasks": [t["name"] for t in TASKS[dataset]],
                      "source": {"train": {"arch": teacher_arch, "epochs": 15, "lr": 0.003}}}],
        "student": {"type": "mlp", "trunk": [16], "head": []},
        "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
        "training": {"epochs": SIZES["student_epochs"], "batch_size": 256, "lr": 0.005, "seed": 0},
        "baseline": False, "export": ["safetensors"],
    }
    if dataset == "mnist1d-mt":
        spec["transfer_set"] = {"generate": SIZES["transfer_rows"]}  # MNIST-1D + transfer set
    return spec


def run_search(api: httpx.Client, *, dataset: str, sampler: str, seed: int, trials: int) -> dict:
    body = {"name": f"{dataset}-{sampler}-{seed}", "base": base_spec(dataset), "space": SPACE,
            "goal": {"max_params": PARAM_CAP,
                     "objectives": [{"metric": "mean_retention", "direction": "maximize"},
                                    {"metric": "params", "direction": "minimize"}]},
            "trials": trials, "parallel": 2, "sampler": sampler, "seed": seed}
    created = api.post("/v1/searches", json=body)
    created.raise_for_status()
    search_id = created.json()["id"]
    while (search := api.get(f"/v1/searches/{search_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
    student_seconds, jobs = 0.0, []
    for trial in search["trials"]:
        results = api.get(f"/v1/jobs/{trial['job_id']}/results")
        if results.status_code == 200:
            student_seconds += sum(s["seconds"] for s in results.json()["stages"] if s["name"] == "student")
            job = api.get(f"/v1/jobs/{trial['job_id']}").json()
            jobs.append({key: datetime.fromisoformat(job[key]) for key in ("created_at", "started_at", "finished_at")}
                        | {"engine": results.json()["timing"]["total_seconds"]})
    events = api.get(f"/v1/searches/{search_id}/events", params={"limit": 1000}).json()["data"]
    finalising = [datetime.fromisoformat(e["created_at"]) for e in events if e["kind"] == "trial_finalising"]
    finished = datetime.fromisoformat(search["finished_at"])
    feasible = [t for t in search["trials"] if t["state"] == "complete"]
    points = [(t["measures"]["mean_retention"], t["measures"]["params"]) for t in feasible]
    wall = (datetime.fromisoformat(search["finished_at"]) - datetime.fromisoformat(search["started_at"])).total_seconds()
    return {"dataset": dataset, "sampler": sampler, "seed": seed, "trials": trials, "search_id": search_id,
            "status": search["status"], "feasible": len(feasible),
            "hypervolume": hypervolume_2d(points, (0.0, float(PARAM_CAP))),
            "best_feasible_mean_retention": max((p[0] for p in points), default=None),
            "wall_seconds": wall, "student_stage_seconds": student_seconds,
            "cost_ratio": wall / student_seconds if student_seconds else None,
            "cost_ratio_2_workers": wall / (student_seconds / 2) if student_seconds else None,
            # light trials: the front's finalise jobs, from the first one's start to the search's end
            "finalise_jobs": len(finalising),
            "finalise_seconds": (finished - min(finalising)).total_seconds() if finalising else 0.0,
            "trial_timeline": timeline(jobs)}


def timeline(jobs: list[dict]) -> dict:
    """Where the trials' time went, summed over the trial jobs: queued -> claimed (broker pickup,
    waiting for a free worker), claimed -> finished (the job: engine plus claim/store/finish), the
    engine's own total, and each trial's end -> the next trial queued (the controller step)."""
    jobs = sorted(jobs, key=lambda j: j["created_at"])
    gaps = []
    for job in jobs[2:]:
        ended = [j["finished_at"] for j in jobs if j["finished_at"] <= job["created_at"]]
        if ended:
            gaps.append((job["created_at"] - max(ended)).total_seconds())
    return {"queued_to_claimed_s": sum((j["started_at"] - j["created_at"]).total_seconds() for j in jobs),
            "claimed_to_finished_s": sum((j["finished_at"] - j["started_at"]).total_seconds() for j in jobs),
            "engine_total_s": sum(j["engine"] for j in jobs),
            "trial_end_to_next_queued_s": sum(gaps), "gaps": len(gaps)}


def table(rows: list[dict]) -> str:
    lines = [("| dataset | sampler | seeds | hypervolume (mean +- sd) | best feasible mean retention | "
              "wall / sum(student stage) | wall / (sum/2) |"), "|---|---|---|---|---|---|---|"]
    for dataset in sorted({r["dataset"] for r in rows}):
        for sampler in ("tpe", "random", "nsga2"):
            group = [r for r in rows if r["dataset"] == dataset and r["sampler"] == sampler]
            if not group:
                continue
            hv = [r["hypervolume"] for r in group]
            best = [r["best_feasible_mean_retention"] for r in group if r["best_feasible_mean_retention"] is not None]
            sd = statistics.stdev(hv) if len(hv) > 1 else 0.0
            lines.append(f"| {dataset} | {sampler} | {len(group)} | {statistics.mean(hv):.1f} +- {sd:.1f} | "
                         f"{statistics.mean(best):.4f} | {statistics.mean(r['cost_ratio'] for r in group):.2f} | "
                         f"{statistics.mean(r['cost_ratio_2_workers'] for r in group):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["digits-mt", "mnist1d-mt"])
    parser.add_argument("--out", type=Path, default=Path("bench-search.jsonl"))
    parser.add_argument("--samplers", nargs="+", choices=["tpe", "random", "nsga2"], default=["tpe", "random"])
    parser.add_argument("--student-epochs", type=int, default=SIZES["student_epochs"])
    parser.add_argument("--transfer-rows", type=int, default=SIZES["transfer_rows"])
    args = parser.parse_args()
    SIZES.update(student_epochs=args.student_epochs, transfer_rows=args.transfer_rows)
    extra = {"DISTILLERY_TORCH_THREADS": "1", "DISTILLERY_SEARCH_POLL_SECONDS": "0.5",
             "DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT": "100"}
    with stack(backend="embedded", worker=False, extra_env=extra) as s:
        workers = [subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "distillery", "-c", "1",
             "--loglevel", "WARNING", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            env=s.env, cwd=ROOT, start_new_session=True, stderr=subprocess.STDOUT,
            stdout=open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "ab"))  # noqa: SIM115 (the worker's lifetime)
            for _ in range(2)]
        rows = []
        try:
            with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=120) as api:
                for seed in args.seeds:
                    for dataset in args.datasets:
                        for sampler in args.samplers:
                            row = run_search(api, dataset=dataset, sampler=sampler, seed=seed, trials=args.trials)
                            row["load"] = os.getloadavg()
                            row["sizes"] = dict(SIZES)
                            rows.append(row)
                            with args.out.open("a") as fh:
                                fh.write(json.dumps(row) + "\n")
                            print(json.dumps(row), flush=True)
        finally:
            for worker in workers:
                os.killpg(worker.pid, 15)
                worker.wait(timeout=60)
    print(table(rows))


if __name__ == "__main__":
    main()
