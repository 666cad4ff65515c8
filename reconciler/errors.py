"""The exception vocabulary shared by every layer.

Design decision: errors are classified by what a human or the daemon should do next, not by where they
were raised. ``InvalidInput`` means "fix your input" (exit 64), ``TransientError`` means "retrying may
help" (the daemon backs off and retries), ``PermanentError`` means "stop and tell a human" (Stalled).
Every message is written for the person reading it and must never contain a secret: callers pass
names of environment variables and paths of key files, never their contents.

This module imports nothing from the package, so any layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar


class ReconcilerError(Exception):
    """Base of every error the reconciler reports to a user.

    ``code`` is the failure code a raising site that knows better attaches (``coded``); a plain word
    here, the vocabulary and the mapping for everything else live in ``plan/failures.py``."""

    code: str | None = None
    facts: dict[str, Any] | None = None  # figures a failure event carries besides its message (sizes)


E = TypeVar("E", bound=BaseException)


def coded(exc: E, code: str) -> E:
    """``exc`` with failure code ``code`` attached (unless a deeper site attached one already)."""
    if getattr(exc, "code", None) is None:
        exc.code = code  # type: ignore[attr-defined]
    return exc


class InvalidInput(ReconcilerError):
    """The user's input (state.yaml, a command-line argument) is wrong; nothing was changed."""


@dataclass(frozen=True)
class SpecProblem:
    source: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}: {self.path}: {self.message}"


class SpecInvalid(InvalidInput):
    """state.yaml failed validation; carries every problem found, each with its position."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        count = len(problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the state file")


class PermanentError(ReconcilerError):
    """Retrying will not help: a human must act (the message says what to do)."""


class TransientError(ReconcilerError):
    """A passing failure (a busy server, a network blip); retrying with backoff may succeed."""


class PlanBlocked(PermanentError):
    """The planner refuses to act; each reason says why and what to do."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class LockHeld(ReconcilerError):
    """Another reconciler process is working on the same stack."""


class CommandFailed(ReconcilerError):
    """An external command exited non-zero. ``argv`` holds no secrets (they travel in the environment)."""

    def __init__(self, argv: list[str], returncode: int, stderr_tail: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        detail = f": {stderr_tail.strip()}" if stderr_tail.strip() else ""
        super().__init__(
            f"`{' '.join(argv[:3])}{' ...' if len(argv) > 3 else ''}` exited {returncode}{detail}"
        )


class HostFault(TransientError):
    """The machine failed while checking or restoring a backup set (no file descriptors, a full tmpfs,
    a port taken, a server that does not start): the set is not at fault, stays a candidate, and the
    operation is retried. ``plan.faults`` is the policy that tells this apart from a content fault."""
