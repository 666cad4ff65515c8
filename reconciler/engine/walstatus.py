"""What ``status`` says about continuous WAL: the receiver's last error and the slot as the server sees it.

Design decisions (review15):
- Before, a receiver that could not stream (the daemon stopped, pg_receivewal failing, a full spool
  disk) was a log line only, and its in-memory error was cleared by the next tick that itself raised
  nothing: ``status`` claimed nothing was wrong while the recovery point grew. The recovery point is
  what continuous protection promises, so ``status`` shows it.
- The slot is observed, not recorded: ``pg_replication_slots`` says whether a receiver is streaming,
  how much WAL the server holds for it (in RAM mode, in RAM, up to ``max_slot_wal_keep_size``) and
  whether the slot was invalidated (``lost``: the chain has a gap; the next base starts a new one).
  A daemon killed with -9 cannot report that it stopped streaming; the server can.
- The receiver's error is written by the streamer on a change of state only (not per tick), like
  ``walOffsite``.
"""

from __future__ import annotations

import os
from typing import Any

from reconciler.system import clock, fs

STATUS_FILE = "wal-stream.json"


def note(state_dir: str, error: str | None) -> None:
    """The streamer's state changed: ``error`` (failing) or None (streaming again)."""
    document: dict[str, Any] = {"state": "failing" if error else "streaming", "since": clock.now_iso()}
    if error:
        document["error"] = error
    fs.atomic_write_json(os.path.join(state_dir, STATUS_FILE), document)


def _slot(endpoint: Any, slot: str) -> dict[str, Any] | None:
    from reconciler.databases import postgres as pg

    with pg.connect(endpoint) as conn:
        row = conn.execute(
            "SELECT active, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
            "safe_wal_size FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    if row is None:
        return None
    return {"active": bool(row[0]), "walStatus": row[1], "retainedBytes": row[2], "safeBytes": row[3]}


def build(ctx: Any, observed: Any) -> dict[str, Any] | None:
    """``status``'s ``continuousWal``; None when continuous protection is off."""
    from reconciler.backup import physical

    if not ctx.spec.backup.continuous.enabled:
        return None
    receiver = fs.read_json(os.path.join(ctx.state_dir, STATUS_FILE))
    document: dict[str, Any] = {
        "receiver": receiver if isinstance(receiver, dict) else None,
        "slot": None,
        "problem": None,
    }
    service = observed.services.get("postgres")
    if service is None or not service.running or service.port is None:
        return document
    try:
        slot = _slot(ctx.runtime.endpoint("postgres", service.port), physical.slot_name(ctx.spec.stack))
    except Exception as exc:  # psycopg's errors too: status still renders, and says so
        document["problem"] = f"the replication slot could not be read ({type(exc).__name__}: {exc})"
        return document
    document["slot"] = slot
    if slot is None:
        document["problem"] = "no replication slot: no WAL is streamed (the daemon creates it)"
    elif slot["walStatus"] == "lost":
        document["problem"] = (
            "the replication slot was invalidated (max_slot_wal_keep_size): the WAL chain has a gap, "
            "and a restore replays no further than it until the next backup set starts a new chain"
        )
    elif not slot["active"]:
        error = (receiver or {}).get("error") if isinstance(receiver, dict) else None
        document["problem"] = (
            f"no receiver is streaming{f' ({error})' if error else ' (is the daemon running?)'}: "
            f"the recovery point grows; the server holds {slot['retainedBytes']} bytes of WAL for it"
            + (
                f", {slot['safeBytes']} more before the slot is invalidated"
                if slot["safeBytes"] is not None
                else ""
            )
        )
    return document
