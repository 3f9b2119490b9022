"""Event streams at scale: status latency while 500 SSE streams follow 50 jobs (issue 17's target: p99 <= 250 ms).

    .venv/bin/python bench/sse_streams.py [--backend embedded|postgres] [--streams 500] [--jobs 50]
        [--seconds 30] [--rate 20] [--app-root DIR]

Starts a real stack (bench/_stack.py: migrate, uvicorn, one Celery worker, on embedded SQLite +
filesystem broker or PostgreSQL + Redis), submits --jobs long jobs (the worker trains one at a time,
so one job writes an event per epoch while the others wait in the queue, as on a busy service),
opens --streams SSE streams spread evenly over the jobs, then sends GET /v1/jobs/{id} at --rate per
second (open loop: a slow answer does not delay the next request) for --seconds. It prints JSON:
status p50/p99/max from the scheduled send time, requests with no answer within 20 s, streams that
opened and were still open at the end, events the streams received, the API's CPU use.

--app-root runs the API and worker from another checkout with this venv, e.g. the code before the
per-job feeds: `git archive e2e658c~1 | tar -x -C /tmp/before` then `--app-root /tmp/before`.
The per-key rate limit, the active-job cap and the stream cap are raised for the run.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import _stack
from tests.conftest import tiny_spec

NO_ANSWER_SECONDS = 20.0
LONG_JOB = {"epochs": 5000, "batch_size": 64, "lr": 0.003, "seed": 0}  # outlasts the measurement


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stream:
    """One SSE stream on a raw connection (an HTTP client per stream would cost the bench more CPU than the API)."""

    def __init__(self, url: str, key: str, job_id: str):
        parts = urlsplit(url)
        self.host, self.port, self.job_id, self.key = parts.hostname, parts.port, job_id, key
        self.status: int | None = None
        self.events = 0
        self.ended = False  # the server closed it (job ended, or an error)
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, opened: asyncio.Event) -> None:
        try:
            reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write((f"GET /v1/jobs/{self.job_id}/events/stream HTTP/1.1\r\nHost: {self.host}\r\n"
                               f"Authorization: Bearer {self.key}\r\nAccept: text/event-stream\r\n\r\n").encode())
            status_line = await reader.readline()
            self.status = int(status_line.split()[1]) if status_line else 0
            opened.set()
            while line := await reader.readline():
                if line.startswith(b"id: "):
                    self.events += 1
        except (OSError, ValueError, IndexError):
            self.status = self.status or 0
        finally:
            opened.set()
            self.ended = True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def measure(url: str, key: str, api_pid: int, *, streams: int, jobs: int, seconds: float, rate: float) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as http:
        job_ids = []
        for i in range(jobs):
            r = await http.post("/v1/jobs", json=tiny_spec(name=f"sse-{i}", training=LONG_JOB))
            r.raise_for_status()
            job_ids.append(r.json()["id"])
        log(f"{jobs} jobs submitted")
        t_open = time.perf_counter()
        conns = [Stream(url, key, job_ids[i % jobs]) for i in range(streams)]
        opened = [asyncio.Event() for _ in conns]
        tasks = [asyncio.create_task(c.run(e)) for c, e in zip(conns, opened)]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 120)
        except TimeoutError:
            pass
        open_seconds = time.perf_counter() - t_open
        log(f"{sum(1 for c in conns if c.status == 200)} of {streams} streams open in {open_seconds:.1f} s")
        deadline = time.monotonic() + 90  # time from the first job's training, when events flow
        while conns and time.monotonic() < deadline and max(c.events for c in conns) < 10:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)

        latencies: list[float] = []
        timeline: list[tuple[float, float]] = []  # (scheduled at, seconds from start; latency)
        failures: list[str] = []

        async def status(at: float, job_id: str) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            try:
                r = await http.get(f"/v1/jobs/{job_id}", timeout=NO_ANSWER_SECONDS)
                latencies.append(time.perf_counter() - at)
                timeline.append((at - start, latencies[-1]))
                if r.status_code != 200:
                    failures.append(f"HTTP {r.status_code}")
            except httpx.TimeoutException:
                failures.append("no answer within 20 s")
            except httpx.HTTPError as exc:
                failures.append(type(exc).__name__)

        log(f"events flowing ({max((c.events for c in conns), default=0)} on the busiest stream); timing status")
        for job_id in job_ids[:10]:  # open the client's first connections before the clock starts
            try:
                await http.get(f"/v1/jobs/{job_id}", timeout=NO_ANSWER_SECONDS)
            except httpx.HTTPError:
                pass  # an API that cannot answer now gets its failures counted below
        n = int(seconds * rate)
        lags: list[float] = []
        start = time.perf_counter() + 1.0  # the requests' tasks are created first, off the clock
        events_before = sum(c.events for c in conns)
        cpu_before = cpu_seconds(api_pid)

        async def client_lag() -> None:  # how late the bench's own loop runs (it shares the cores)
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            while time.perf_counter() < start + seconds:
                t0 = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - t0 - 0.01)

        t_cpu = time.perf_counter()
        await asyncio.gather(client_lag(), *(status(start + i / rate, job_ids[i % jobs]) for i in range(n)))
        cpu = cpu_seconds(api_pid) - cpu_before
        cpu_window, elapsed = time.perf_counter() - t_cpu, time.perf_counter() - start
        still_open = sum(1 for c in conns if c.status == 200 and not c.ended)
        events = sum(c.events for c in conns) - events_before
        running = [c.events for c in conns if c.events > 1]
        for c in conns:  # the stack's teardown stops the worker and drops the database
            c.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": streams, "jobs": jobs, "streams_opened_200": sum(1 for c in conns if c.status == 200),
        "stream_open_statuses": sorted({c.status for c in conns if c.status != 200}),
        "seconds_to_open_streams": round(open_seconds, 1), "streams_open_at_end": still_open,
        "events_received_during_run": events,
        "events_per_stream_of_jobs_with_progress": [min(running), max(running)] if running else [],
        "status_requests": n, "answered": len(latencies), "failures": len(failures),
        "failure_kinds": sorted(set(failures)),
        "status_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "status_p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "status_max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "slowest_at_s_ms": [[round(t, 1), round(1000 * x)] for t, x in sorted(timeline, key=lambda p: -p[1])[:8]],
        "bench_loop_lag_p99_max_ms": [round(1000 * percentile(lags, 0.99)), round(1000 * max(lags))],
        "seconds": round(elapsed, 1), "api_cpu_percent": round(100 * cpu / cpu_window, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "postgres"], default="embedded")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20, help="status requests per second")
    parser.add_argument("--app-root", type=Path, help="run the API and worker from this checkout")
    args = parser.parse_args()
    if args.app_root:
        _stack.ROOT = args.app_root.resolve()  # the stack starts its processes with this as their cwd
    env = {"DISTILLERY_RATE_LIMIT": "", "DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT": "1000",
           "DISTILLERY_MAX_STREAMS_PER_TENANT": str(max(1, args.streams)), "DISTILLERY_TORCH_THREADS": "1"}
    load_before = os.getloadavg()[0]
    with _stack.stack(backend=args.backend, extra_env=env) as s:
        result = asyncio.run(measure(s.url, s.key, s.api_pid, streams=args.streams, jobs=args.jobs,
                                     seconds=args.seconds, rate=args.rate))
    result.update(backend=args.backend, code=str(args.app_root or "this checkout"),
                  load_average_1min_before=round(load_before, 2),
                  at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
