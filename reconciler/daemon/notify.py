"""healthchecks.io-style pings: ``<url>/start``, ``<url>`` on success, ``<url>/fail`` with the reason.

The URL is a secret (anyone holding it can fake pings), so it comes from the environment and is never
logged; failures to ping are logged without it and never fail a reconcile.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env_name: str, timeout: float = 5.0) -> None:
        self.env_name = env_name
        self.timeout = timeout

    @property
    def url(self) -> str | None:
        value = os.environ.get(self.env_name, "").strip()
        return value.rstrip("/") or None

    def start(self) -> None:
        self._ping("/start", b"")

    def success(self, message: str = "") -> None:
        self._ping("", message.encode())

    def fail(self, message: str, code: str | None = None) -> None:
        """A failure ping: the body starts with ``[code]`` and the code is in ``X-Reconciler-Failure-Code``
        (docs/FAILURES.md), so a receiver can route on it without parsing the sentence."""
        body = f"[{code}] {message}" if code else message
        self._ping("/fail", body.encode(), code)

    def _ping(self, suffix: str, body: bytes, code: str | None = None) -> None:
        url = self.url
        if url is None:
            return
        request = urllib.request.Request(url + suffix, data=body[:10_000], method="POST")
        request.add_header("Content-Type", "text/plain; charset=utf-8")
        if code:
            request.add_header("X-Reconciler-Failure-Code", code)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("webhook ping%s (from $%s) failed: %s", suffix or " success", self.env_name, reason)
