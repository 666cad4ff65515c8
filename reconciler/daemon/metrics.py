"""Prometheus ``/metrics`` and ``/healthz`` on 127.0.0.1, served from a snapshot the loop updates.

Design decisions:
- The HTTP thread never observes anything itself: a scrape must not start a ``psql`` or stat a data
  directory, and must answer while a long backup runs. It renders the last snapshot.
- Loopback only: the figures describe someone's database host; exposing them is the user's choice
  (a reverse proxy), not ours.
- ``/healthz`` answers 503 when the loop is Stalled or has not finished a pass for three resync
  periods (plus the time a pass in progress is allowed), so a supervisor can tell wedged from busy.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class Snapshot:
    """Thread-safe figures, written by the loop, read by the HTTP server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.gauges: dict[str, tuple[str, float]] = {}
        self.labelled: dict[str, tuple[str, dict[str, str], float]] = {}
        self.health: dict[str, Any] = {"ok": True, "reason": "starting"}

    def set(self, name: str, value: float | None, help_text: str) -> None:
        with self._lock:
            if value is None:
                self.gauges.pop(name, None)
            else:
                self.gauges[name] = (help_text, float(value))

    def set_labelled(self, name: str, labels: dict[str, str], value: float, help_text: str) -> None:
        with self._lock:
            self.labelled[name] = (help_text, labels, float(value))

    def add(self, name: str, amount: float, help_text: str) -> None:
        with self._lock:
            current = self.gauges.get(name, (help_text, 0.0))[1]
            self.gauges[name] = (help_text, current + amount)

    def set_health(self, ok: bool, reason: str, **details: Any) -> None:
        with self._lock:
            self.health = {"ok": ok, "reason": reason, **details}

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (help_text, value) in sorted(self.gauges.items()):
                kind = "counter" if name.endswith("_total") else "gauge"
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]
            for name, (help_text, labels, value) in sorted(self.labelled.items()):
                rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                lines += [
                    f"# HELP {name} {help_text}",
                    f"# TYPE {name} gauge",
                    f"{name}{{{rendered}}} {_number(value)}",
                ]
        return "\n".join(lines) + "\n"

    def health_document(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.health)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


class MetricsServer:
    def __init__(self, snapshot: Snapshot, port: int, liveness: Any) -> None:
        self.snapshot = snapshot
        self.liveness = liveness  # callable returning (ok, reason) computed from the loop's timestamps
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, server.snapshot.render().encode(), "text/plain; version=0.0.4")
                elif self.path == "/healthz":
                    ok, reason = server.liveness()
                    body = {
                        **server.snapshot.health_document(),
                        "ok": ok,
                        "reason": reason,
                        "time": time.time(),
                    }
                    self._send(200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        return Handler
