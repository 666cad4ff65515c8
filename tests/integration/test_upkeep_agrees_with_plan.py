"""The daemon's upkeep keeps the promises ``plan`` shows (issue 14): the same sets count for both."""

from __future__ import annotations

from reconciler.daemon.loop import Daemon
from reconciler.daemon.tasks.base import Upkeep
from reconciler.engine import records
from tests.conftest import Stack
from tests.integration.test_backups import context


def manifests(stack: Stack) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (stack.dir / "data" / "backups").glob("*.manifest.json"))


def test_a_rejected_newest_set_is_owed_a_backup_by_the_daemon_as_by_plan(stack: Stack) -> None:
    stack.write(stack.default_document(mode="disk"))
    stack.cli("apply")  # ends with a first set
    (only,) = manifests(stack)
    ctx = context(stack)
    records.record_verification(ctx, only, {"ok": False, "reason": "sha256 does not match", "rejects": True})
    # plan: the rejected set protects nothing, so no backup exists
    shown = stack.cli("plan", check=2).stdout
    assert "take a backup set" in shown and "no backup set exists" in shown
    daemon = Daemon(str(stack.state_file))
    observed = ctx.observe()
    daemon.backup.run(Upkeep(ctx, observed))
    fresh = daemon._pending_conditions["BackupFresh"]
    # the daemon neither calls the backups fresh nor leaves the promise broken until the next cadence
    assert len(manifests(stack)) == 2, (fresh, manifests(stack))
    stack.cli("plan", check=0)

    # When every new set is rejected, the daemon does not take one per pass: one replacement per cadence.
    replacement = manifests(stack)[-1]
    records.record_verification(ctx, replacement, {"ok": False, "reason": "bad again", "rejects": True})
    daemon.backup.run(Upkeep(ctx, ctx.observe()))
    assert manifests(stack) == [only, replacement]
    fresh = daemon._pending_conditions["BackupFresh"]
    assert fresh[:2] == (False, "Stale") and "is not usable either" in fresh[2], fresh


def test_the_backup_age_metric_is_the_age_of_the_newest_usable_set(stack: Stack) -> None:
    """``reconciler_backup_age_seconds`` ages the set ``plan`` ages the backups by: a newer set that a
    verification rejected (or a planted one) must not make the backups look fresh on a dashboard."""
    stack.write(stack.default_document(mode="disk"))
    stack.cli("apply")  # ends with a first set
    (first,) = manifests(stack)
    stack.cli("backup")
    newest = manifests(stack)[-1]
    ctx = context(stack)
    daemon = Daemon(str(stack.state_file))
    publish = daemon.tasks[-1]

    def published_since() -> float | None:
        entry = daemon.snapshot.ages.get("reconciler_backup_age_seconds")
        return entry[1] if entry else None

    publish.run(Upkeep(ctx, ctx.observe()))
    by_name = {s.name: s.created.timestamp() for s in ctx.observe().backups.sets}
    assert published_since() == by_name[newest]
    records.record_verification(
        ctx, newest, {"ok": False, "reason": "sha256 does not match", "rejects": True}
    )
    publish.run(Upkeep(ctx, ctx.observe()))
    assert published_since() == by_name[first], "the rejected newest set is not the backup's age"
    records.record_verification(ctx, first, {"ok": False, "reason": "bad too", "rejects": True})
    publish.run(Upkeep(ctx, ctx.observe()))
    assert published_since() is None, "no usable set: no age, never the age of a set restore would skip"
