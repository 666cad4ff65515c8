"""``verify`` of a set's physical member: its base restored in a scratch server, then its WAL replayed.

Design decisions:
- What is replayed is what restore on boot would replay, cut at the next base: the chain from the
  base's stop segment (``recovery.chain_plan``: every segment authenticated and checksummed before
  PostgreSQL sees it) up to the stop segment of the next vouched base of the same cluster and
  timeline, or to the end of the chain (the segment in progress included) when this base is the
  newest. Past the next base the WAL is that base's to prove (``plan/walchain.bounded``).
- Order: extract, ``pg_verifybackup`` on the base alone (every file's checksum and the WAL the base
  needs), then stage the window into ``pg_wal``, start with ``recovery.signal`` (as a restore does:
  ``restore_command = '/bin/false'``, promote at the end) and wait for the promotion. The server
  answers with the end of the replay (``pg_last_wal_replay_lsn``, ``pg_last_xact_replay_timestamp``).
  The base cannot be started once without the WAL first: a crash-recovered base becomes a primary
  that writes its own WAL and cannot replay the shipped segments after it.
- A WAL gap (a segment missing, corrupt, planted or foreign before the next base) does **not** reject
  the set: the base and the logical dump are still good, and restore on boot recovers to the last
  consistent point before the gap. It is a WAL problem and is reported as one: ``wal.ok = false`` with
  code ``wal_gap`` naming the segment and the reason, and a ``WalGap`` event. The replay still runs up
  to the gap, so verify proves what a restore would get.
- A physical recovery that fails (the server does not start or promote) is reported as the base's
  failure, as before: restore on boot would fall back to the logical dump, which this set still has.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from reconciler.backup import physical
from reconciler.backup.restore import CheckedSet
from reconciler.databases import postgres as pg
from reconciler.engine import events, recovery
from reconciler.engine.context import StackContext
from reconciler.plan import walchain
from reconciler.plan.failures import FailureCode
from reconciler.stores.local import LocalStore
from reconciler.system import proc

log = logging.getLogger(__name__)


def next_base(ctx: StackContext, checked: CheckedSet) -> tuple[str, str] | None:
    """(set, stop segment) of the earliest vouched base after ``checked``'s, same cluster and timeline."""
    from reconciler.engine import backups
    from reconciler.plan.backupsets import MANIFEST_SUFFIX

    base = checked.base()
    assert base is not None
    ours = recovery.stop_segment(base)
    timeline, number = walchain.parse(ours)
    store = backups.local_store(ctx)
    found: tuple[int, str, str] | None = None
    for name, doubt in backups.vouch_local(ctx).items():
        if doubt is not None or name == checked.name:
            continue
        with store.open(f"{name}{MANIFEST_SUFFIX}") as handle:
            document = json.loads(handle.read())
        for member in document["members"]:
            if member.get("content") != physical.CONTENT:
                continue
            if str(member["system_identifier"]) != str(base["system_identifier"]):
                continue
            stop = recovery.stop_segment(member)
            their_timeline, their_number = walchain.parse(stop)
            if (
                their_timeline == timeline
                and their_number > number
                and (found is None or their_number < found[0])
            ):
                found = (their_number, name, stop)
    return None if found is None else (found[1], found[2])


def replay_window(
    ctx: StackContext, checked: CheckedSet, mac_key: bytes | None
) -> tuple[recovery.ChainPlan, str]:
    """The chain a restore would replay, cut at the next base; and what it was cut at, in words."""
    plan = recovery.chain_plan(ctx, checked, mac_key)
    following = next_base(ctx, checked)
    found = walchain.Chain(plan.base_stop, tuple(plan.segments), plan.partial, plan.gap, plan.after_gap)
    window = walchain.bounded(found, following[1] if following else None)
    cut = dataclasses.replace(
        plan,
        segments=list(window.segments),
        partial=window.partial,
        partial_source=plan.partial_source if window.partial else None,
        gap=window.gap,
        after_gap=window.after_gap,
        spool_segments=[s for s in plan.spool_segments if s in window.segments],
        chunk_segments=[s for s in plan.chunk_segments if s in window.segments],
        spool_note=plan.spool_note if window.partial else None,
    )
    return cut, (f"the next base ({following[0]})" if following else "the end of the chain")


def verify_physical(
    ctx: StackContext,
    store: LocalStore,
    checked: CheckedSet,
    identity: Any,
    runtime: Any,
    data_dir: str,
    port: int,
) -> dict[str, Any]:
    """The ``base`` entry of ``verify``'s result, with its ``wal`` replay. The caller owns ``data_dir``
    and stops the server. A failure is returned, not raised (see the module docstring)."""
    from reconciler.backup import keys
    from reconciler.runtimes.local import postgres_bindir

    mac_key = keys.mac_key(identity) if identity is not None else None
    started = time.monotonic()
    try:
        recovery.extract_base(store, checked, identity, data_dir)
        user, uid, gid = runtime.account("postgres")
        recovery.chown_tree(data_dir, uid, gid)
        os.chmod(data_dir, 0o700)
        proc.run([os.path.join(postgres_bindir(), "pg_verifybackup"), data_dir], user=user, timeout=3600)
        base_seconds = time.monotonic() - started
        plan, until = replay_window(ctx, checked, mac_key)
        recovery.stage_wal(ctx, plan, checked, identity, mac_key, data_dir)
        recovery.write_recovery_settings(data_dir, None)
        recovery.chown_tree(data_dir, uid, gid)
        runtime.start_service("postgres", data_dir, port)
        endpoint = runtime.endpoint("postgres", port)
        recovery.wait_promoted_at(endpoint)
        with pg.connect(endpoint) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_database WHERE datallowconn), pg_last_wal_replay_lsn()::text, "
                "pg_last_xact_replay_timestamp()::text"
            ).fetchone()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.warning("the base backup of %s did not verify: %s", checked.name, reason)
        return {"ok": False, "reason": reason}
    assert row is not None
    wal: dict[str, Any] = {
        "ok": plan.gap is None,
        "segments": len(plan.segments) - 1,  # the first is the base's own stop segment
        "partial": plan.partial,
        "until": until,
        "end_lsn": row[1],
        "end_time": row[2],  # the last transaction replayed (the server's text form)
        "seconds": round(time.monotonic() - started - base_seconds, 3),
    }
    if plan.gap is not None:
        wal.update(
            code=FailureCode.WAL_GAP.value,
            gap=plan.gap,
            reason=plan.rejected.get(plan.gap, "it is missing"),
            after_gap=plan.after_gap,
        )
        message = f"verify of {checked.name}: {plan.describe()}"
        log.warning("%s", message)
        events.emit(ctx.state_dir, "Warning", "WalGap", message)
    return {"ok": True, "databases": int(str(row[0])), "wal": wal}
