"""Events: an append-only JSON-lines log of what the daemon noticed and did (``reconciler events``).

Design decisions:
- One JSON object per line, appended with a single ``write`` on an ``O_APPEND`` descriptor: a crash
  can lose at most the line being written, never corrupt earlier ones, and a reader skips a torn tail.
- Kubernetes vocabulary: ``type`` is Normal or Warning, ``reason`` a CamelCase word a script can match,
  ``message`` a sentence for people. Messages come from our own errors, which never carry secrets.
- Bounded: past ``MAX_BYTES`` the file is rotated once to ``events.jsonl.1``, so a daemon that runs
  for years on an SD card does not fill it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from reconciler.engine.status import now_iso

MAX_BYTES = 4 * 1024 * 1024


def events_path(state_dir: str) -> str:
    return os.path.join(state_dir, "events.jsonl")


def emit(state_dir: str, kind: str, reason: str, message: str, **fields: Any) -> dict[str, Any]:
    event = {"time": now_iso(), "type": kind, "reason": reason, "message": message, **fields}
    path = events_path(state_dir)
    os.makedirs(state_dir, exist_ok=True)
    try:
        if os.path.getsize(path) > MAX_BYTES:
            os.replace(path, path + ".1")
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)
    return event


def read(state_dir: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Events oldest first (the rotated file before the current one); torn lines are skipped."""
    found: list[dict[str, Any]] = []
    path = events_path(state_dir)
    for name in (path + ".1", path):
        try:
            with open(name, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(event, dict):
                        found.append(event)
        except FileNotFoundError:
            continue
    return found[-limit:] if limit else found
