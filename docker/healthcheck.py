"""Container healthcheck without curl: exit 0 when GET TARGET answers 2xx, 1 otherwise.

Usage: python /app/docker/healthcheck.py [TARGET]
TARGET is a full URL or a path (default /healthz) on http://127.0.0.1:$DISTILLERY_PORT (default 8000).
Standard library only; proxies from the environment are ignored (the target is always local).
"""

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    target = argv[1] if len(argv) > 1 else "/healthz"
    if target.startswith("/"):
        target = f"http://127.0.0.1:{os.environ.get('DISTILLERY_PORT', '8000')}{target}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(target, timeout=4) as resp:  # a 4xx/5xx (e.g. /readyz's 503) raises HTTPError
            status = resp.status
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        print(f"unhealthy: GET {target}: {exc}", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
