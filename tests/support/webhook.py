"""A real HTTP endpoint on 127.0.0.1 that records the webhook pings the reconciler sends (the
healthchecks.io-style ``RECONCILER_WEBHOOK_URL``): path, body and failure-code header of each POST."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class WebhookReceiver:
    port: int
    pings: list[tuple[str, str, str | None]] = field(default_factory=list)  # (path, body, code header)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _body, _code in self.pings]


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    received: list[tuple[str, str, str | None]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            received.append((self.path, body, self.headers.get("X-Reconciler-Failure-Code")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield WebhookReceiver(server.server_address[1], received)
    finally:
        server.shutdown()
        server.server_close()
