"""API speed: GET /v1/jobs/{id} vs a bare FastAPI endpoint on the same server settings; submit latency;
the API's resident memory when idle (and whether torch is loaded in it).

    .venv/bin/python bench/api_ratio.py [--clients 50] [--seconds 20] [--rounds 3] [--backend postgres|embedded]
                                        [--rate-limit 100000/minute] [--env DISTILLERY_LOG_FORMAT=json]
                                        [--scrape-every 15] [--api-log-level info] [--webhooks]

Besides requests/s it reports each server's CPU time per request (utime + stime of the server process
over the round / requests served): the load generator shares the cores, so req/s moves with the
machine's load, while CPU per request is what the server's code costs.
The per-key rate limit is off by default (the recorded baseline ran so); ``--rate-limit`` turns it on
with a limit the load stays under, so its cost is counted too.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.webhooks.schemas import EventType
from bench._stack import ROOT, child_pids, rss_mib, stack
from bench.load_status import percentile
from tests.conftest import tiny_spec
from tests.procs import free_port

DROPPED_CONNECTIONS = [0]  # requests retried after the server closed their connection


def cpu_seconds(pid: int) -> float:
    """Return utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, url: str, headers: dict, clients: int, seconds: float) -> tuple[float, list[float], int, float]:
    """Run one round; return req/s, latencies, errors and the server's CPU ms per request."""
    cpu0 = cpu_seconds(pid)
    rps, latencies, errors = asyncio.run(hammer(url, headers, clients, seconds))
    return rps, latencies, errors, 1000 * (cpu_seconds(pid) - cpu0) / max(1, len(latencies))


async def hammer(url: str, headers: dict, clients: int, seconds: float) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
        stop_at = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = await http.get(url)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # uvicorn closed a keep-alive connection idle for 5 s just as it was reused: a
                    # client starved of CPU on a loaded machine. Counted, then sent again.
                    DROPPED_CONNECTIONS[0] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        return len(latencies) / (time.perf_counter() - started), latencies, errors


@contextmanager
def scraping(url: str, every: float) -> Iterator[None]:
    """GET ``url`` every ``every`` seconds in a thread for the block (nothing when ``every`` is 0)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            assert httpx.get(url, timeout=30).status_code == 200

    thread = threading.Thread(target=loop, daemon=True)
    if every > 0:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if every > 0:
            thread.join()


def uvicorn_children(pid: int) -> list[int]:
    return child_pids(pid) or [pid]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=["postgres", "embedded"], default="postgres")
    parser.add_argument("--rate-limit", default="", help="per-key limit for the run, e.g. 100000/minute; "
                                                         "empty (default) turns the limiter off")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra setting for the API, e.g. DISTILLERY_LOG_FORMAT=json (repeatable)")
    parser.add_argument("--scrape-every", type=float, default=0,
                        help="GET /metrics this often during the status rounds, as Prometheus would (0: never)")
    parser.add_argument("--webhooks", action="store_true",
                        help="register a webhook endpoint for every event type first (deliveries are the webhook "
                             "worker's; the API writes their outbox rows with the events)")
    parser.add_argument("--api-log-level", default="warning",
                        help="uvicorn's --log-level for the API; info writes an access line per request")
    args = parser.parse_args()
    env = {"DISTILLERY_RATE_LIMIT": args.rate_limit, "DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT": "100000",
           **({"DISTILLERY_WEBHOOK_ALLOW_PRIVATE": "true"} if args.webhooks else {}),
           **dict(item.split("=", 1) for item in args.env)}
    report: dict = {"backend": args.backend, "clients": args.clients, "seconds_per_round": args.seconds,
                    "rate_limit": args.rate_limit or "off", "env": args.env, "scrape_every": args.scrape_every,
                    "api_log_level": args.api_log_level, "webhooks": args.webhooks}
    with stack(backend=args.backend, worker=False, extra_env=env, api_log_level=args.api_log_level) as s:
        headers = {"Authorization": f"Bearer {s.key}"}
        api_pid = s.api_pid
        report["api_idle_rss_mib"] = round(rss_mib(api_pid), 1)
        report["api_has_torch_loaded"] = "torch" in Path(f"/proc/{api_pid}/maps").read_text()
        if args.webhooks:
            hook = httpx.post(f"{s.url}/v1/webhooks", headers=headers, timeout=30,
                              json={"url": "http://127.0.0.1:9/hook", "event_types": list(get_args(EventType))})
            assert hook.status_code == 201, hook.text
        job = httpx.post(f"{s.url}/v1/jobs", json=tiny_spec(), headers=headers, timeout=120).json()  # the validator may still be importing torch
        submit = []
        for i in range(200):
            t0 = time.perf_counter()
            r = httpx.post(f"{s.url}/v1/jobs", json={**tiny_spec(), "name": f"p{i}"}, headers=headers, timeout=120)
            submit.append(time.perf_counter() - t0)
            assert r.status_code == 201, r.text
        report["submit_p50_ms"] = round(1000 * statistics.median(submit), 1)
        report["submit_p99_ms"] = round(1000 * percentile(submit, 0.99), 1)
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port),
                                 "--log-level", args.api_log_level], cwd=ROOT, start_new_session=True, env=s.env)
        try:
            time.sleep(3)
            status_rps, bare_rps, p50s, p99s, status_cpu, bare_cpu = [], [], [], [], [], []
            for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both alike
                with scraping(f"{s.url}/metrics", args.scrape_every):
                    rps, lat, errors, cpu_ms = measured(api_pid, f"{s.url}/v1/jobs/{job['id']}", headers,
                                                        args.clients, args.seconds)
                assert errors == 0
                status_rps.append(rps)
                status_cpu.append(cpu_ms)
                p50s.append(statistics.median(lat))
                p99s.append(percentile(lat, 0.99))
                rps, _, _, cpu_ms = measured(bare.pid, f"http://127.0.0.1:{port}/bare", {}, args.clients, args.seconds)
                bare_rps.append(rps)
                bare_cpu.append(cpu_ms)
        finally:
            os.killpg(bare.pid, signal.SIGTERM)
        report.update(
            status_rps_median=round(statistics.median(status_rps), 1), bare_rps_median=round(statistics.median(bare_rps), 1),
            ratio_median=round(statistics.median(s_ / b_ for s_, b_ in zip(status_rps, bare_rps)), 3),
            status_p50_ms=round(1000 * statistics.median(p50s), 1), status_p99_ms=round(1000 * statistics.median(p99s), 1),
            status_cpu_ms_per_request=round(statistics.median(status_cpu), 3),
            bare_cpu_ms_per_request=round(statistics.median(bare_cpu), 3),
            rounds={"status_rps": [round(x, 1) for x in status_rps], "bare_rps": [round(x, 1) for x in bare_rps]},
            api_rss_after_load_mib=round(rss_mib(api_pid), 1), dropped_connections=DROPPED_CONNECTIONS[0])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
