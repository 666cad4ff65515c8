"""Terminal output: data on stdout, logs and progress on stderr.

Design decisions:
- On a terminal, logs and progress are rendered with rich; otherwise logs are JSON lines on stderr
  (one object per line: time, level, logger, message) and progress is silent, so cron mail and
  journald stay quiet and machine-readable.
- Colour follows NO_COLOR (https://no-color.org) and ``--no-color``.
- rich is imported only when something is rendered for a person: import time is part of every
  ``reconciler plan`` run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = str(record.exc_info[1])
        return json.dumps(entry)


class Output:
    def __init__(self, color: bool = True, verbose: bool = False) -> None:
        self.color = color and "NO_COLOR" not in os.environ
        self.verbose = verbose
        self.stderr_tty = sys.stderr.isatty()
        self._out: Console | None = None
        self._err: Console | None = None

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console(color_system="auto" if self.color else None, highlight=False, soft_wrap=True)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(
                stderr=True, color_system="auto" if self.color else None, highlight=False, soft_wrap=True
            )
        return self._err

    def setup_logging(self) -> None:
        level = logging.DEBUG if self.verbose else logging.INFO
        root = logging.getLogger()
        root.handlers.clear()
        if self.stderr_tty:
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(
                console=self.err, show_path=False, show_time=self.verbose, markup=False
            )
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_JsonFormatter())
        handler.setLevel(level)
        root.addHandler(handler)
        root.setLevel(level)
        # Progress is shown by the CLI itself on a terminal; per-step INFO lines are for log files.
        logging.getLogger("reconciler").setLevel(
            level if (self.verbose or not self.stderr_tty) else logging.WARNING
        )

    def json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def error(self, message: str, code: str | None = None) -> None:
        """An error line; ``code`` is its failure code (docs/FAILURES.md), shown and in the JSON line."""
        if self.stderr_tty:
            shown = f"error \\[{code}]:" if code else "error:"  # escaped: not a rich markup tag
            self.err.print(f"[bold red]{shown}[/] {message}", markup=True)
        else:
            entry = {"level": "error", "message": message, **({"code": code} if code else {})}
            sys.stderr.write(json.dumps(entry) + "\n")
