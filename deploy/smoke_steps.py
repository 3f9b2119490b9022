"""The steps of deploy/compose-smoke.sh against a running compose stack (standard library only).

Run by the shell script after `docker compose up -d`; COMPOSE_PROJECT_NAME and COMPOSE_FILE come from
its environment. Each step prints what it saw and how long it took; the first one that does not hold
ends the run with exit status 1. A JSON report of the figures goes to --report.

  1. /readyz answers 200 (migrate ran, the API sees PostgreSQL and Redis);
  2. `docker compose exec api distillery keys create` prints a key that the API accepts;
  3. examples/digits-mt-tiny.json, submitted over HTTP, is trained by the containerised worker;
  4. student.safetensors downloads with the sha256 the API lists (and its ETag), and parses;
  5. `docker compose stop worker` in the middle of a second job hands it back (status queued);
     `docker compose start worker` resumes it to success;
  6. `docker compose restart postgres` in the middle of a third job: the job still succeeds, and the
     key, the earlier jobs and their artifacts are all still there.
"""

import argparse
import hashlib
import json
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "digits-mt-tiny.json"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the stack is local
T0 = time.monotonic()


class StepFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"[steps {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def http(method: str, url: str, key: str | None = None, body: Any = None,
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept": "application/json"}
    data = None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def compose(*args: str, timeout: float = 300) -> str:
    t = time.monotonic()
    result = subprocess.run(["docker", "compose", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise StepFailed(f"docker compose {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
    say(f"docker compose {' '.join(args)}: {time.monotonic() - t:.1f} s")
    return result.stdout


def wait_for(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    """Call check() until it returns something truthy; StepFailed after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError) as exc:  # connection refused/reset while a service restarts
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Stack:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.key = ""
        self.figures: dict[str, Any] = {}

    def ready(self) -> bool:
        status, _, _ = http("GET", f"{self.url}/readyz", timeout=5)
        return status == 200

    def job(self, job_id: str) -> dict[str, Any]:
        status, _, body = http("GET", f"{self.url}/v1/jobs/{job_id}", self.key)
        if status != 200:
            raise StepFailed(f"GET /v1/jobs/{job_id} -> {status}: {body[:300]!r}")
        return json.loads(body)

    def submit(self, spec: dict[str, Any]) -> str:
        status, _, body = http("POST", f"{self.url}/v1/jobs", self.key, spec, timeout=120)
        if status != 201:
            raise StepFailed(f"POST /v1/jobs -> {status}: {body[:500]!r}")
        job = json.loads(body)
        say(f"submitted {spec['name']}: job {job['id']} ({job['status']})")
        return job["id"]

    def wait_status(self, job_id: str, wanted: set[str], timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["status"] in {"failed", "cancelled"} - wanted:
                raise StepFailed(f"job {job_id} {job['status']}: {job.get('error')}")
            return job if job["status"] in wanted else None

        # A GET may fail while PostgreSQL restarts (503): retry through it.
        def tolerant() -> dict[str, Any] | None:
            try:
                return check()
            except StepFailed as exc:
                if " -> 503" in str(exc) or " -> 500" in str(exc):
                    return None
                raise

        return wait_for(f"job {job_id} to be {'/'.join(sorted(wanted))}", tolerant, timeout)

    def wait_training(self, job_id: str, timeout: float, student_epochs: int = 3) -> dict[str, Any]:
        """Until the job runs its student stage and has finished `student_epochs` epochs of it."""
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["status"] in {"failed", "cancelled", "succeeded"}:
                raise StepFailed(f"job {job_id} is {job['status']} before it could be interrupted: {job.get('error')}")
            latest = job.get("metrics") or {}
            ok = (job["status"] == "running" and latest.get("stage") == "student"
                  and latest.get("epoch", 0) >= student_epochs)
            return job if ok else None

        return wait_for(f"job {job_id} to train {student_epochs} student epochs", check, timeout, interval=0.5)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            after = out[-1]["seq"] if out else 0
            status, _, body = http("GET", f"{self.url}/v1/jobs/{job_id}/events?after={after}&limit=1000", self.key)
            if status != 200:
                raise StepFailed(f"GET events of {job_id} -> {status}: {body[:300]!r}")
            page = json.loads(body)
            out += page["data"]
            if not page["has_more"]:
                return out

    def check_resumed(self, job_id: str) -> int:
        """From the job's events: after the `requeued` event no teacher trained again and the student
        went on from its checkpoint. Returns how many student epochs were trained twice."""
        events = self.events(job_id)
        kinds = [e["kind"] for e in events]
        if "requeued" not in kinds:
            raise StepFailed(f"job {job_id} has no `requeued` event: {kinds}")
        cut = kinds.index("requeued")
        before = [e["data"] for e in events[:cut] if e["kind"] == "epoch" and e["data"].get("stage") == "student"]
        after = [e["data"] for e in events[cut:] if e["kind"] == "epoch"]
        if not before or not after:
            raise StepFailed(f"job {job_id}: student epochs before the stop {len(before)}, epochs after {len(after)}")
        retrained = sorted({d["stage"] for d in after if d["stage"].startswith("teacher")})
        if retrained:
            raise StepFailed(f"job {job_id}: after the resume it trained {retrained} again (no checkpoint used)")
        last, first = before[-1]["epoch"], after[0]["epoch"]
        if after[0]["stage"] != "student" or first > last + 1 or first < last:
            raise StepFailed(f"job {job_id}: stopped after student epoch {last}, resumed at "
                             f"{after[0]['stage']} epoch {first}")
        return last + 1 - first

    def artifacts(self, job_id: str) -> dict[str, dict[str, Any]]:
        status, _, body = http("GET", f"{self.url}/v1/jobs/{job_id}/artifacts", self.key)
        if status != 200:
            raise StepFailed(f"GET artifacts of {job_id} -> {status}: {body[:300]!r}")
        return {a["name"]: a for a in json.loads(body)}

    # ------------------------------------------------------------------------------------- the steps

    def step_ready(self) -> None:
        t = time.monotonic()
        wait_for("/readyz to answer 200", self.ready, timeout=300, interval=2)
        self.figures["ready_after_up_s"] = round(time.monotonic() - t, 1)
        say(f"/readyz 200 ({self.figures['ready_after_up_s']} s after up returned)")

    def step_key(self) -> None:
        out = compose("exec", "-T", "api", "distillery", "keys", "create", "smoke", timeout=120)
        self.key = out.strip().splitlines()[-1].strip()
        status, _, body = http("GET", f"{self.url}/v1/jobs", self.key)
        if status != 200:
            raise StepFailed(f"the new key is refused: GET /v1/jobs -> {status}: {body[:300]!r}")
        status, _, _ = http("GET", f"{self.url}/v1/jobs", "not-a-key")
        if status != 401:
            raise StepFailed(f"a wrong key got {status}, not 401")
        say("key created in the api container; the API accepts it and refuses a wrong one")
        # The harness gave pip the host's CA bundle as a build secret: nothing of it may be in the image.
        compose("exec", "-T", "api", "sh", "-c", 'test ! -e /run/secrets/pip_cert && test -z "${PIP_CERT:-}"')
        say("the build secret pip_cert left nothing in the image (no file, no PIP_CERT)")

    def step_train(self) -> str:
        spec = json.loads(TINY.read_text())
        t = time.monotonic()
        job_id = self.submit(spec)
        job = self.wait_status(job_id, {"succeeded"}, timeout=900)
        self.figures["tiny_job_s"] = round(time.monotonic() - t, 1)
        say(f"job {job_id} succeeded in {self.figures['tiny_job_s']} s (attempt {job['attempt']})")
        return job_id

    def step_download(self, job_id: str) -> str:
        listed = self.artifacts(job_id)
        if "student.safetensors" not in listed:
            raise StepFailed(f"no student.safetensors among {sorted(listed)}")
        url = f"{self.url}/v1/jobs/{job_id}/artifacts/student.safetensors"
        status, headers, body = http("GET", url, self.key, timeout=120)
        if status != 200:
            raise StepFailed(f"download -> {status}")
        digest = hashlib.sha256(body).hexdigest()
        want = listed["student.safetensors"]["sha256"]
        if digest != want or len(body) != listed["student.safetensors"]["size"]:
            raise StepFailed(f"student.safetensors: sha256 {digest} / {len(body)} B, listed {want}")
        etag = headers.get("ETag", headers.get("etag", "")).strip('"')
        if etag and etag != want:
            raise StepFailed(f"ETag {etag} != sha256 {want}")
        (header_len,) = struct.unpack("<Q", body[:8])
        tensors = {k for k in json.loads(body[8:8 + header_len]) if k != "__metadata__"}
        if not tensors:
            raise StepFailed("student.safetensors holds no tensor")
        say(f"student.safetensors: {len(body)} B, sha256 {digest[:16]}… as listed, {len(tensors)} tensors")
        return digest

    def longer_spec(self, name: str) -> dict[str, Any]:
        """The tiny example with more student epochs (and no baseline): long enough to interrupt."""
        spec = json.loads(TINY.read_text())
        spec["name"] = name
        spec["training"]["epochs"] = 30
        spec["baseline"] = False
        return spec

    def step_worker_stop(self) -> None:
        job_id = self.submit(self.longer_spec("smoke-worker-stop"))
        before = self.wait_training(job_id, timeout=600)
        say(f"job {job_id} running, student epoch {before['metrics']['epoch']}, progress {before['progress']:.3f}")
        t = time.monotonic()
        compose("stop", "worker", timeout=180)
        self.figures["worker_stop_s"] = round(time.monotonic() - t, 1)
        job = self.wait_status(job_id, {"queued"}, timeout=60)
        self.figures["worker_stop_to_queued_s"] = round(time.monotonic() - t, 1)
        say(f"after `stop worker` ({self.figures['worker_stop_s']} s) the job is queued again "
            f"({self.figures['worker_stop_to_queued_s']} s after the stop began), progress {job['progress']:.3f}")
        t = time.monotonic()
        compose("start", "worker", timeout=120)
        running = wait_for(f"job {job_id} to run again", lambda: (j := self.job(job_id))["status"] != "queued"
                           and j["attempt"] >= 2 and j, timeout=300, interval=0.5)
        self.figures["worker_start_to_running_s"] = round(time.monotonic() - t, 1)
        say(f"after `start worker` the job runs again in {self.figures['worker_start_to_running_s']} s "
            f"(attempt {running['attempt']})")
        done = self.wait_status(job_id, {"succeeded"}, timeout=1200)
        self.figures["worker_start_to_succeeded_s"] = round(time.monotonic() - t, 1)
        self.figures["worker_stop_epochs_repeated"] = self.check_resumed(job_id)
        say(f"job {job_id} succeeded {self.figures['worker_start_to_succeeded_s']} s after `start worker` "
            f"(attempt {done['attempt']}); its events show no teacher retrained and "
            f"{self.figures['worker_stop_epochs_repeated']} student epoch(s) trained twice")
        if "student.safetensors" not in self.artifacts(job_id):
            raise StepFailed(f"job {job_id} succeeded without a student.safetensors")

    def step_postgres_restart(self, first_job: str, first_digest: str) -> None:
        job_id = self.submit(self.longer_spec("smoke-postgres-restart"))
        before = self.wait_training(job_id, timeout=600)
        say(f"job {job_id} running, student epoch {before['metrics']['epoch']}, progress {before['progress']:.3f}")
        t = time.monotonic()
        seen: dict[int, int] = {}  # /readyz answers while `restart postgres` runs
        errors: list[BaseException] = []

        def run_restart() -> None:
            try:
                compose("restart", "postgres", timeout=180)
            except (StepFailed, subprocess.TimeoutExpired) as exc:
                errors.append(exc)

        restart = threading.Thread(target=run_restart)
        restart.start()
        while restart.is_alive():
            try:
                code = http("GET", f"{self.url}/readyz", timeout=5)[0]
            except OSError:
                code = 0
            seen[code] = seen.get(code, 0) + 1
            time.sleep(0.2)
        restart.join()
        if errors:
            raise StepFailed(f"docker compose restart postgres: {errors[0]}")
        self.figures["postgres_restart_s"] = round(time.monotonic() - t, 1)
        self.figures["postgres_restart_readyz_answers"] = {str(k): v for k, v in sorted(seen.items())}
        say(f"/readyz answers during the restart (status: count): {seen}")
        wait_for("/readyz 200 after the PostgreSQL restart", self.ready, timeout=120)
        self.figures["postgres_restart_to_ready_s"] = round(time.monotonic() - t, 1)
        done = self.wait_status(job_id, {"succeeded"}, timeout=1200)
        self.figures["postgres_restart_to_succeeded_s"] = round(time.monotonic() - t, 1)
        say(f"`restart postgres` took {self.figures['postgres_restart_s']} s, /readyz 200 again after "
            f"{self.figures['postgres_restart_to_ready_s']} s; the job succeeded (attempt {done['attempt']}) "
            f"{self.figures['postgres_restart_to_succeeded_s']} s after the restart began")
        status, _, body = http("GET", f"{self.url}/v1/jobs?limit=50", self.key)
        jobs = {j["id"]: j["status"] for j in json.loads(body)["data"]} if status == 200 else {}
        if status != 200 or len(jobs) != 3 or set(jobs.values()) != {"succeeded"}:
            raise StepFailed(f"after the restart the key's jobs are {jobs} (GET -> {status})")
        if self.artifacts(first_job)["student.safetensors"]["sha256"] != first_digest:
            raise StepFailed("the first job's student changed after the restart")
        if self.step_download(first_job) != first_digest:
            raise StepFailed("the first job's student downloads differently after the restart")
        say("nothing lost: the key, all 3 jobs (succeeded) and the first student's bytes are still there")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    stack = Stack(args.url)
    try:
        stack.step_ready()
        stack.step_key()
        first = stack.step_train()
        digest = stack.step_download(first)
        stack.step_worker_stop()
        stack.step_postgres_restart(first, digest)
    except (StepFailed, KeyError, subprocess.TimeoutExpired) as exc:
        say(f"STEP FAILED: {exc}")
        return 1
    finally:
        if args.report:
            args.report.write_text(json.dumps(stack.figures, indent=2) + "\n")
    say(f"all steps held: {json.dumps(stack.figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
