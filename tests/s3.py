"""A private S3-compatible server for tests: moto's standalone server, a real process on a free port."""

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.procs import free_port, running, wait_http

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_s3(*, bucket: str, log: Path) -> Iterator[str]:
    """Run moto's S3 server with ``bucket`` created; yield its endpoint URL. Requests are logged to ``log``."""
    import boto3

    port = free_port()
    with running([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                 env={"PATH": "/usr/bin:/bin", **CREDENTIALS}, log=log):
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", timeout=30)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=bucket)
        yield endpoint


def object_gets(log: Path, *, bucket: str, key: str) -> int:
    """Count the GET requests for one object in the server's log (every download, whoever made it)."""
    pattern = re.compile(rf'"GET /{re.escape(bucket)}/{re.escape(key)}(\?[^ ]*)? HTTP/[0-9.]+" 200')
    return sum(1 for line in log.read_text(errors="replace").splitlines() if pattern.search(line))
