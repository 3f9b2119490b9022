"""A webhook receiver for tests, run as its own process: verifies each Standard Webhooks signature
with nothing but the standard library, logs every request as a JSON line, and answers 500 to the
first ``--fail-first`` requests, 2xx after.

    python tests/webhooks/receiver.py --port 8123 --secret whsec_... --log requests.jsonl --fail-first 2
"""

import argparse
import base64
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300  # the Standard Webhooks default replay window


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """True when one of the `v1,` signatures matches and the timestamp is recent."""
    msg_id, stamp, signatures = headers.get("webhook-id"), headers.get("webhook-timestamp"), headers.get("webhook-signature")
    if not (msg_id and stamp and signatures) or abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()).decode()
    return any(version == "v1" and hmac.compare_digest(value, expected)
               for version, _, value in (s.partition(",") for s in signatures.split()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args()
    seen = {"count": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen["count"] += 1
            status = 500 if seen["count"] <= args.fail_first else 204
            record = {"id": headers.get("webhook-id"), "timestamp": headers.get("webhook-timestamp"),
                      "signature_ok": verify(args.secret, headers, body), "host": headers.get("host"),
                      "path": self.path, "answered": status, "received_at": time.time(),
                      "body": json.loads(body or b"null")}
            with open(args.log, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
