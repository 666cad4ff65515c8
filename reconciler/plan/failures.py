"""Failure codes: the one, fixed vocabulary every reported failure carries (docs/FAILURES.md).

Design decisions:
- A code answers "what failed, and what do I do", in a word a script, an alert rule or a dashboard can
  match: events (``code``), status conditions (``code``), metrics (``reconciler_failures_total{code}``)
  and webhook pings carry the same word. Messages stay sentences for people; codes never change
  meaning once released (a new situation gets a new code, an old one is never reused).
- Small on purpose: a code exists only where the operator's next move differs. Where a failure happened
  inside an operation (which ``pg_restore`` flag, which Drive HTTP status) is in the message, not in
  the code. A set that fails its checks during ``verify`` and during a restore is the same problem
  (``verify_error``), whichever command found it; ``restore_error`` is a restore that could not finish.
- Every failure maps to exactly one code (``failure_code``), decided in three steps, the first that
  answers wins: the code the raising site attached (``ReconcilerError.code``: only it knows that a
  write failed in the store, or that pg_dump exited), then the kind of exception (an invalid spec, a
  blocked plan, a host fault, the lock), then the operation that was running. So an unforeseen error
  still gets the operation's code, never none and never two.
- Pure (no I/O): the mapping is property-tested in ``tests/unit/test_failures.py``; ``errors.py``
  (below every layer) stores the code as a plain string, which this ``StrEnum`` compares equal to.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from reconciler.errors import HostFault, InvalidInput, LockHeld, PlanBlocked
from reconciler.plan.faults import Stage


class FailureCode(StrEnum):
    DUMP_ERROR = "dump_error"
    TOO_LARGE = "too_large"
    STORE_FULL = "store_full"
    STORE_ERROR = "store_error"
    UPLOAD_ERROR = "upload_error"
    DOWNLOAD_ERROR = "download_error"
    AUTH_ERROR = "auth_error"
    VERIFY_ERROR = "verify_error"
    RESTORE_ERROR = "restore_error"
    SWITCH_ERROR = "switch_error"
    HOST_FAULT = "host_fault"
    SERVICE_DOWN = "service_down"
    SPEC_INVALID = "spec_invalid"
    PLAN_BLOCKED = "plan_blocked"
    BUSY = "busy"
    RECONCILE_ERROR = "reconcile_error"
    WAL_GAP = "wal_gap"


@dataclass(frozen=True)
class Meaning:
    meaning: str
    action: str


# The table docs/FAILURES.md shows (a unit test keeps the two identical).
TABLE: dict[FailureCode, Meaning] = {
    FailureCode.DUMP_ERROR: Meaning(
        "a backup failed: the dump tool failed (pg_dump exited non-zero, Redis's snapshot failed), or the "
        "backup was refused before it began (no recipient, a service down, data left by an incomplete "
        "restore); nothing of the set was kept",
        "read the message: the tool's output, or what to do first; check `services.postgres.dump_options`",
    ),
    FailureCode.TOO_LARGE: Meaning(
        "a backup set grew past `backup.max_set_size`; it was stopped at the limit and removed, every "
        "earlier set kept",
        "find what grew (a runaway table, a log); clean it up or raise `backup.max_set_size`",
    ),
    FailureCode.STORE_FULL: Meaning(
        "the local store ran out of space (ENOSPC, quota) writing a set; the partial file was removed",
        "free space or move `backup.stores.local.path` to a larger disk; nothing was deleted",
    ),
    FailureCode.STORE_ERROR: Meaning(
        "the local store could not be written or read for another reason (permissions, an I/O error, a "
        "directory that belongs to someone else)",
        "fix the store directory named in the message",
    ),
    FailureCode.UPLOAD_ERROR: Meaning(
        "uploading sets to Google Drive failed (network, credentials, permissions, Drive full); the sets "
        "stay in the local store",
        "fix what the message names; the daemon and `reconciler sync` retry",
    ),
    FailureCode.DOWNLOAD_ERROR: Meaning(
        "fetching a set from Google Drive failed (network, credentials, a transfer that did not match)",
        "fix what the message names; the restore is retried, the Drive set stays a candidate",
    ),
    FailureCode.AUTH_ERROR: Meaning(
        "a set does not authenticate under this identity: its manifest's MAC fails, it is unsigned, or "
        "it is not encrypted to this key; it is rejected",
        "check `backup.encryption.identity_file` is the key the sets were made with; a planted set is "
        "ignored",
    ),
    FailureCode.VERIFY_ERROR: Meaning(
        "a set's content fails its checks (size or sha256 of a member, zstd, a dump the database "
        "refuses, restored data that differs from the manifest); it is rejected",
        "take a fresh backup; check the disk that holds the store; older sets are still tried",
    ),
    FailureCode.RESTORE_ERROR: Meaning(
        "a restore could not finish: no set is left that can be restored, or the restore itself failed; "
        "the stack stays down rather than start empty",
        "read the rejected sets in `reconciler status`; restore one by hand or `apply --allow-empty`",
    ),
    FailureCode.SWITCH_ERROR: Meaning(
        "a mode switch failed; before its point of no return it was rolled back (the stack runs in the "
        "old mode)",
        "read the failed step in the message and the journal; fix it and apply again",
    ),
    FailureCode.HOST_FAULT: Meaning(
        "the machine failed, not the data: no file descriptors, a full tmpfs, a port taken, a server "
        "or the Docker engine that does not start; retried",
        "fix the host resource the message names; nothing needs to be restored",
    ),
    FailureCode.SERVICE_DOWN: Meaning(
        "a service state.yaml wants is not running (its process died)",
        "the daemon restarts it at once; if it keeps dying, read the server's log",
    ),
    FailureCode.SPEC_INVALID: Meaning(
        "state.yaml (or a command-line argument) is invalid; nothing was changed",
        "fix the file at the line:column given; the daemon keeps the last valid spec meanwhile",
    ),
    FailureCode.PLAN_BLOCKED: Meaning(
        "the plan refuses to act (foreign data, not enough RAM, data in two places, ...); nothing was "
        "changed",
        "read the blockers in `reconciler plan`; each says what to change",
    ),
    FailureCode.BUSY: Meaning(
        "another reconciler (a daemon or a command) holds the stack's lock",
        "wait for it to finish, or stop the daemon first",
    ),
    FailureCode.RECONCILE_ERROR: Meaning(
        "applying the plan failed for another reason (a step's command failed)",
        "read the step and the tool's output in the message; the daemon retries with backoff",
    ),
    FailureCode.WAL_GAP: Meaning(
        "a shipped WAL segment after a base backup is missing, corrupt, planted or of another cluster "
        "(`verify`, restore on boot); recovery stops at the last consistent point before it, the set "
        "is not rejected",
        "read the segment and reason in the message (`WalGap` event); take a backup set now: its base "
        "starts a whole chain",
    ),
}


# The planner's words when no set can be restored (a blocker): that is a restore_error, not any block.
STAYS_DOWN = "The stack stays down rather than start empty"


class Operation(Enum):
    """What was running when a failure happened: the code of last resort."""

    BACKUP = "backup"
    UPLOAD = "upload"
    DOWNLOAD = "download"
    VERIFY = "verify"
    RESTORE = "restore"
    SWITCH = "switch"
    APPLY = "apply"


_BY_OPERATION = {
    Operation.BACKUP: FailureCode.DUMP_ERROR,
    Operation.UPLOAD: FailureCode.UPLOAD_ERROR,
    Operation.DOWNLOAD: FailureCode.DOWNLOAD_ERROR,
    Operation.VERIFY: FailureCode.VERIFY_ERROR,
    Operation.RESTORE: FailureCode.RESTORE_ERROR,
    Operation.SWITCH: FailureCode.SWITCH_ERROR,
    Operation.APPLY: FailureCode.RECONCILE_ERROR,
}


# The CLI commands whose failures are not the plain "apply" kind.
_COMMANDS = {
    "backup": Operation.BACKUP,
    "sync": Operation.UPLOAD,
    "verify": Operation.VERIFY,
    "restore": Operation.RESTORE,
}


def operation_for_command(name: str | None) -> Operation:
    """What a CLI command does, for the code of last resort (``apply``, ``down``, ... are APPLY)."""
    return _COMMANDS.get(name or "", Operation.APPLY)


def for_stage(stage: Stage) -> FailureCode:
    """The code of a set rejected at ``stage``: its authenticity, or the rest of its content."""
    return FailureCode.AUTH_ERROR if stage is Stage.AUTHENTICATE else FailureCode.VERIFY_ERROR


def parse(value: object) -> FailureCode | None:
    """A code from its word (as stored in an exception, an event or a verify result), or None."""
    try:
        return FailureCode(str(value)) if value is not None else None
    except ValueError:
        return None


def for_operation(operation: Operation) -> FailureCode:
    """The code of last resort: what fails when ``operation`` fails for no more specific reason."""
    return _BY_OPERATION[operation]


def failure_code(exc: BaseException, operation: Operation = Operation.APPLY) -> FailureCode:
    """Exactly one code for ``exc``, raised while ``operation`` ran (see the module docstring)."""
    attached = parse(getattr(exc, "code", None))
    if attached is not None:
        return attached
    if isinstance(exc, InvalidInput):
        return FailureCode.SPEC_INVALID
    if isinstance(exc, PlanBlocked):
        restore = any(STAYS_DOWN in reason for reason in exc.reasons)
        return FailureCode.RESTORE_ERROR if restore else FailureCode.PLAN_BLOCKED
    if isinstance(exc, LockHeld):
        return FailureCode.BUSY
    if isinstance(exc, HostFault):
        return FailureCode.HOST_FAULT
    return _BY_OPERATION[operation]


def failure_fields(exc: BaseException, operation: Operation = Operation.APPLY) -> dict[str, object]:
    """What a failure event carries besides its message: the code and the raising site's figures."""
    facts = getattr(exc, "facts", None)
    return {"code": failure_code(exc, operation).value, **(facts if isinstance(facts, dict) else {})}


def markdown_table() -> str:
    """The table of docs/FAILURES.md (a unit test keeps the file and ``TABLE`` identical)."""
    rows = ["| code | what failed | what to do |", "|---|---|---|"]
    rows += [f"| `{code.value}` | {row.meaning} | {row.action} |" for code, row in TABLE.items()]
    return "\n".join(rows) + "\n"
