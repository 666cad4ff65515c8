"""Prometheus ``/metrics`` and ``/healthz`` on 127.0.0.1, served from a snapshot the loop updates.

Design decisions:
- The HTTP thread never observes anything itself: a scrape must not start a ``psql`` or stat a data
  directory, and must answer while a long backup runs. It renders the last snapshot, but a snapshot
  of *facts*, not of derived figures: the newest backup's timestamp is stored and its age computed at
  scrape time (an age frozen between passes is a lie), and each service's ``up`` comes from the newest
  observation, which the process watcher overrides the instant a process exits.
- Loopback only: the figures describe someone's database host; exposing them is the user's choice
  (a reverse proxy), not ours.
- ``/healthz`` answers 503 when the loop is Stalled, when a service state.yaml wants is down, or when
  the loop has not finished a pass for three resync periods (plus the time a pass in progress is
  allowed), so a supervisor can tell wedged from busy, and a dead database from a healthy stack.
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
        self.labelled: dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]] = {}
        self.ages: dict[str, tuple[str, float]] = {}  # name → (help, unix time the age counts from)
        self.health: dict[str, Any] = {"ok": True, "reason": "starting"}

    def set(self, name: str, value: float | None, help_text: str) -> None:
        with self._lock:
            if value is None:
                self.gauges.pop(name, None)
            else:
                self.gauges[name] = (help_text, float(value))

    def set_labelled(
        self, name: str, labels: dict[str, str], value: float, help_text: str, only: bool = True
    ) -> None:
        """One series of a labelled metric; ``only`` drops the metric's other series (e.g. the old mode)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = {} if only else dict(self.labelled.get(name, ("", {}))[1])
            series[key] = float(value)
            self.labelled[name] = (help_text, series)

    def drop(self, name: str) -> None:
        """Forget every series of a labelled metric (what it measured is no longer this daemon's)."""
        with self._lock:
            self.labelled.pop(name, None)

    def add_labelled(self, name: str, labels: dict[str, str], amount: float, help_text: str) -> None:
        """Add to one series of a labelled counter (its other series stay)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = dict(self.labelled.get(name, ("", {}))[1])
            series[key] = series.get(key, 0.0) + amount
            self.labelled[name] = (help_text, series)

    def labelled_values(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        with self._lock:
            return dict(self.labelled.get(name, ("", {}))[1])

    def set_age(self, name: str, since: float | None, help_text: str) -> None:
        """A gauge rendered as ``now - since`` (unix seconds) at every scrape."""
        with self._lock:
            if since is None:
                self.ages.pop(name, None)
            else:
                self.ages[name] = (help_text, float(since))

    def add(self, name: str, amount: float, help_text: str) -> None:
        with self._lock:
            current = self.gauges.get(name, (help_text, 0.0))[1]
            self.gauges[name] = (help_text, current + amount)

    def set_health(self, ok: bool, reason: str, **details: Any) -> None:
        with self._lock:
            self.health = {"ok": ok, "reason": reason, **details}

    def render(self) -> str:
        lines: list[str] = []
        now = time.time()
        with self._lock:
            gauges = dict(self.gauges)
            gauges.update({name: (text, max(now - since, 0.0)) for name, (text, since) in self.ages.items()})
            for name, (help_text, value) in sorted(gauges.items()):
                kind = "counter" if name.endswith("_total") else "gauge"
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]
            for name, (help_text, series) in sorted(self.labelled.items()):
                kind = "counter" if name.endswith("_total") else "gauge"
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                for labels, value in sorted(series.items()):
                    rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{rendered}}} {_number(value)}")
        return "\n".join(lines) + "\n"

    def health_document(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.health)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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
