"""Upload and download throughput for a large file (default 200 MB) through the HTTP API.

    .venv/bin/python bench/transfer_throughput.py [--mb 200] [--backend postgres|embedded]

Upload: a transfer-set .npz (streamed to disk, hashed and content-checked by the API).
Download: a job artifact of the same size (placed in the artifact store for an ended job, then
fetched with GET, sha256 checked).
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import stack  # noqa: E402


def _seed_artifact(env: dict[str, str], path: Path) -> str:
    """Create an ended job owning `path` as an artifact (what a worker would have stored)."""
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from app.config import get_settings
        from app.db import session_scope
        from app.models import Artifact, Job, Tenant
        from app.storage import get_store

        get_settings.cache_clear()
        settings = get_settings()
        with session_scope(settings.resolved_database_url) as db:
            tenant = db.query(Tenant).filter(Tenant.name == "bench").one()
            job = Job(tenant_id=tenant.id, name="throughput", spec={}, spec_sha256="0" * 64, status="succeeded")
            db.add(job)
            db.flush()
            stored = get_store(settings).save(job_id=job.id, name="big.bin", source=path)
            db.add(Artifact(job_id=job.id, name="big.bin", path=stored.key, size=stored.size, sha256=stored.sha256,
                            media_type="application/octet-stream"))
            db.commit()
            return job.id
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--backend", choices=["postgres", "embedded"], default="postgres")
    args = parser.parse_args()
    env = {"DISTILLERY_RATE_LIMIT": "", "DISTILLERY_MAX_UPLOAD_BYTES": str((args.mb + 10) << 20)}
    with stack(backend=args.backend, worker=False, extra_env=env) as s:
        rows = (args.mb << 20) // (4 * 256)
        npz = s.data_dir / "transfer.npz"
        np.savez(npz, x=np.random.default_rng(0).random((rows, 256), dtype=np.float32))
        size = npz.stat().st_size
        headers = {"Authorization": f"Bearer {s.key}"}
        with httpx.Client(base_url=s.url, headers=headers, timeout=600) as http, npz.open("rb") as fh:
            t0 = time.perf_counter()
            r = http.post("/v1/files", data={"purpose": "transfer_set"}, files={"file": ("transfer.npz", fh)})
            upload_s = time.perf_counter() - t0
            assert r.status_code == 201, r.text
        job_id = _seed_artifact(s.env, npz)
        digest = hashlib.sha256()
        with httpx.Client(base_url=s.url, headers=headers, timeout=600) as http:
            t0 = time.perf_counter()
            with http.stream("GET", f"/v1/jobs/{job_id}/artifacts/big.bin") as response:
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
            download_s = time.perf_counter() - t0
        assert digest.hexdigest() == r.json()["sha256"]
    mb = size / 1e6
    print(json.dumps({"backend": args.backend, "file_mb": round(mb, 1),
                      "upload_s": round(upload_s, 2), "upload_mb_per_s": round(mb / upload_s, 1),
                      "download_s": round(download_s, 2), "download_mb_per_s": round(mb / download_s, 1)}, indent=2))


if __name__ == "__main__":
    main()
