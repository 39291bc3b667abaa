"""A webhook receiver for development: prints each webhook the local stack sends, and checks its signature.

    python -m local.webhook_receiver [--port 9000] [--secret whsec_...] [--status 200]

Point a report's webhook target at http://127.0.0.1:<port>/ (`make run` allows loopback receivers). With
`--secret` (the `webhookSecret` of the report's creation response) each request is verified as the Standard
Webhooks specification says, with the `standardwebhooks` package; `--status` answers every request with that
status instead of 200 (500 to watch the retries, 410 to watch the target being disabled).
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(secret: str | None, body: bytes, headers: dict[str, str]) -> str:
    if not secret:
        return "signature not checked (no --secret)"
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        Webhook(secret).verify(body, headers)
        return "signature valid"
    except WebhookVerificationError as err:
        return f"SIGNATURE INVALID: {err}"


def serve(port: int, secret: str | None, status: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = dict(self.headers.items())
            try:
                payload: Any = json.loads(body)
                summary = f"{payload.get('type')} job {payload.get('data', {}).get('jobId')} " \
                          f"{payload.get('data', {}).get('status')}"
            except ValueError:
                summary = f"{len(body)} bytes, not JSON"
            print(f"{headers.get('webhook-id')}  {summary}  ({verify(secret, body, headers)}; answered {status})",
                  flush=True)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.webhook_receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="the report's webhookSecret (whsec_...), to verify signatures")
    parser.add_argument("--status", type=int, default=200, help="the status every request is answered with")
    args = parser.parse_args(argv)
    server = serve(args.port, args.secret, args.status)
    print(f"receiving webhooks on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
