"""A small HTTP client for the Distillery API (used by the CLI and the end-to-end tests)."""

import hashlib
import json
import time
from collections.abc import Callable, Iterator
import uuid
from pathlib import Path
from typing import Any

import httpx

from app.job_status import TERMINAL_STATUSES
from app.schemas import ArtifactOut, EventList, EventOut, FileList, FileOut, JobOut, ValidationSummary
from app.search_schemas import SearchOut


class ApiError(Exception):
    """A problem+json answer: ``status``, ``code``, ``detail`` and the whole ``problem``."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        self.code = problem.get("code", "http_error")
        self.detail = problem.get("detail", "")
        super().__init__(f"{status} {self.code}: {self.detail}")


RETRY_STATUSES = {429, 502, 503, 504}


class Client:
    """Typed calls of the Distillery API; retries 429/5xx and dropped connections with backoff.

    Answers come back as the API's own response models (``app.schemas``), so a field the server
    renamed fails here, at parse time, rather than as a KeyError in the caller.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 0.5):
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}"})
        self.retries, self.backoff = retries, backoff

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        # Every call retried here is safe to repeat: reads, cancel, and submits carrying an Idempotency-Key.
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError:
                if last:
                    raise
                time.sleep(self.backoff * 2**attempt)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                retry_after = response.headers.get("retry-after", "")
                wait = float(retry_after) if retry_after.isdigit() else self.backoff * 2**attempt
                time.sleep(min(wait, 30.0))
                continue
            break
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise ApiError(response.status_code, problem)
        return response

    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> JobOut:
        """Submit a spec (dry-run by the server first; ApiError 422 names the field at fault)."""
        key = idempotency_key or uuid.uuid4().hex  # a retried submit must not make a second job
        return JobOut.model_validate(self._request("POST", "/v1/jobs", json=spec,
                                                   headers={"Idempotency-Key": key}).json())

    def validate(self, spec: dict[str, Any]) -> ValidationSummary:
        """Dry-run a spec: its stored form, sha256 and a summary; raises ApiError (422) when invalid."""
        return ValidationSummary.model_validate(self._request("POST", "/v1/jobs/validate", json=spec).json())

    def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def events(self, job_id: str, *, after: int = 0, limit: int = 100) -> EventList:
        return EventList.model_validate(self._request("GET", f"/v1/jobs/{job_id}/events",
                                                      params={"after": after, "limit": limit}).json())

    def results(self, job_id: str) -> dict[str, Any]:
        """results.json as written by the worker (the API has no schema for it: it grows with the engine)."""
        return self._request("GET", f"/v1/jobs/{job_id}/results").json()

    def artifacts(self, job_id: str) -> list[ArtifactOut]:
        return [ArtifactOut.model_validate(a) for a in self._request("GET", f"/v1/jobs/{job_id}/artifacts").json()]

    def wait(self, job_id: str, *, poll: float = 1.0, timeout: float | None = None,
             on_update: Callable[[JobOut], None] | None = None) -> JobOut:
        """Poll until the job ends; ``on_update(job)`` sees every poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.status in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(poll)

    def submit_search(self, goal: dict[str, Any], *, idempotency_key: str | None = None) -> SearchOut:
        """Submit a search goal (base, space, goal, trials...); retried safely, as ``submit``, under an Idempotency-Key."""
        key = idempotency_key or uuid.uuid4().hex  # a retried submit must not start a second search
        return SearchOut.model_validate(self._request("POST", "/v1/searches", json=goal,
                                                      headers={"Idempotency-Key": key}).json())

    def search(self, search_id: str) -> SearchOut:
        return SearchOut.model_validate(self._request("GET", f"/v1/searches/{search_id}").json())

    def cancel_search(self, search_id: str) -> SearchOut:
        """Cancel a search: its running child jobs are cancelled, no trial starts after."""
        return SearchOut.model_validate(self._request("POST", f"/v1/searches/{search_id}/cancel").json())

    def search_events(self, search_id: str, *, after: int = 0, limit: int = 100) -> EventList:
        return EventList.model_validate(self._request("GET", f"/v1/searches/{search_id}/events",
                                                      params={"after": after, "limit": limit}).json())

    def wait_search(self, search_id: str, *, poll: float = 2.0, timeout: float | None = None,
                    on_update: Callable[[SearchOut], None] | None = None) -> SearchOut:
        """Poll until the search ends; ``on_update(search)`` sees every poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            search = self.search(search_id)
            if on_update is not None:
                on_update(search)
            if search.status in TERMINAL_STATUSES:
                return search
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"search {search_id} still {search.status} after {timeout}s")
            time.sleep(poll)

    def upload(self, path: Path, *, purpose: str) -> FileOut:
        """Upload a dataset, transfer set or teacher file; returns its record (id, sha256, meta)."""
        with path.open("rb") as fh:
            return FileOut.model_validate(self._request("POST", "/v1/files", data={"purpose": purpose},
                                                        files={"file": (path.name, fh)}).json())

    def files(self, *, purpose: str | None = None) -> list[FileOut]:
        params = {"purpose": purpose} if purpose else {}
        return FileList.model_validate(self._request("GET", "/v1/files", params=params).json()).data

    def follow(self, job_id: str, *, after: int = 0) -> Iterator[EventOut]:
        """Yield the job's events as they happen (SSE), resuming after ``after``; ends with the job."""
        headers = {"Last-Event-ID": str(after)}
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, response.json())
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield EventOut.model_validate(json.loads(line[6:]))

    def download(self, job_id: str, name: str, dest: Path, *, sha256: str | None = None) -> Path:
        """Stream one artifact to ``dest`` and check its sha256 against the listing."""
        digest = hashlib.sha256()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, response.json())
            with tmp.open("wb") as fh:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    fh.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{name}: sha256 {digest.hexdigest()} does not match the listing's {sha256}")
        tmp.replace(dest)
        return dest

    def download_all(self, job_id: str, out_dir: Path) -> list[Path]:
        return [self.download(job_id, a.name, out_dir / a.name, sha256=a.sha256) for a in self.artifacts(job_id)]
