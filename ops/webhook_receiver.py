"""A webhook receiver for chatq that verifies every delivery, with the standard library only.

    python -m ops.webhook_receiver --port 9000 --secret whsec_...   # or CHATQ_WEBHOOK_SECRET

Copy :func:`verify` into your own receiver: it checks a Standard Webhooks
signature (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) against
the tenant's secret from ``GET /v1/webhooks/secret``, and refuses a timestamp
more than five minutes away (a replayed request). Deduplicate on ``webhook-id``:
a delivery may arrive more than once, with the same id.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300


def verify(secret: str, headers: Mapping[str, str], body: bytes,
           now: float | None = None) -> bool:
    """True when ``body`` was signed with ``secret`` (``whsec_...``) recently."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # The header may hold several space-separated signatures (during a key rotation).
    return any(
        version == "v1" and hmac.compare_digest(signature, expected)
        for version, _, signature in (s.partition(",") for s in
                                      headers.get("webhook-signature", "").split())
    )


def handler(secret: str) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if not verify(secret, headers, body):
                self.send_response(401)
                self.end_headers()
                return
            job = json.loads(body)
            print(f"{headers['webhook-id']}: job {job['id']} is {job['status']}", flush=True)
            self.send_response(204)
            self.end_headers()

    return Receiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret", default=os.environ.get("CHATQ_WEBHOOK_SECRET"))
    args = parser.parse_args()
    if not args.secret:
        parser.error("pass --secret (or set CHATQ_WEBHOOK_SECRET): GET /v1/webhooks/secret")
    server = ThreadingHTTPServer((args.host, args.port), handler(args.secret))
    print(f"listening on http://{args.host}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
