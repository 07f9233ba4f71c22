"""A stand-in gateway for balancer tests: answers ``GET /healthz`` at once and every other
request after ``--delay-ms``, and counts the requests it holds at a time.

    python tests/integration/slow_gateway.py --port P --delay-ms 100

``GET /stats`` answers ``{"max_in_flight": N, "served": M}`` (requests other than /healthz and
/stats). One thread per connection, HTTP/1.1 keep-alive, loopback only; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.served = 0


def handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/healthz":
                return self._send(200, b'{"status":"ok"}')
            if self.path == "/stats":
                with state.lock:
                    stats = {"max_in_flight": state.max_in_flight, "served": state.served}
                return self._send(200, json.dumps(stats).encode())
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                time.sleep(state.delay_s)
                self._send(200, b'{"items":[1,2,3]}')
            finally:
                with state.lock:
                    state.in_flight -= 1
                    state.served += 1

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=100.0)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(State(args.delay_ms / 1000)))
    server.daemon_threads = True
    print(json.dumps({"event": "ready", "port": args.port}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
