"""POST /v1/jobs latency (what bench/api_ratio.py measures for submits) plus the cost of the dry run.

    .venv/bin/python bench/submit_latency.py [--submits 200] [--backend postgres|embedded]

Reports the first submit after startup (the validator process may still be importing torch), then
p50/p99 of ``--submits`` sequential submits of tiny_spec (a built-in dataset and a trained teacher),
the API's RSS and whether torch is mapped into it, and the RSS of the API's child processes
(the validator). Run it against another checkout with ``cd <checkout> && python bench/submit_latency.py``.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import child_pids, rss_mib, stack  # noqa: E402
from bench.load_status import percentile  # noqa: E402
from tests.conftest import tiny_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--backend", choices=["postgres", "embedded"], default="postgres")
    args = parser.parse_args()
    env = {"DISTILLERY_RATE_LIMIT": "", "DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT": "100000"}
    report: dict = {"backend": args.backend, "submits": args.submits}
    with stack(backend=args.backend, worker=False, extra_env=env) as s:
        headers = {"Authorization": f"Bearer {s.key}"}
        with httpx.Client(base_url=s.url, headers=headers, timeout=120) as http:
            t0 = time.perf_counter()
            r = http.post("/v1/jobs", json={**tiny_spec(), "name": "first"})
            report["first_submit_ms"] = round(1000 * (time.perf_counter() - t0), 1)
            assert r.status_code == 201, r.text
            times = []
            for i in range(args.submits):
                t0 = time.perf_counter()
                r = http.post("/v1/jobs", json={**tiny_spec(), "name": f"p{i}"})
                times.append(time.perf_counter() - t0)
                assert r.status_code == 201, r.text
        report["submit_p50_ms"] = round(1000 * statistics.median(times), 1)
        report["submit_p99_ms"] = round(1000 * percentile(times, 0.99), 1)
        report["api_rss_mib"] = round(rss_mib(s.api_pid), 1)
        report["api_has_torch_loaded"] = "torch" in Path(f"/proc/{s.api_pid}/maps").read_text()
        report["child_rss_mib"] = [round(rss_mib(pid), 1) for pid in child_pids(s.api_pid)]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
