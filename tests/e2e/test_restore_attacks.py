"""Hostile review of the journaled restore (``engine/restore_op.py``): the attacks that broke it.

Each test is a way the restore could lose or roll back acknowledged data, or be reported as something
it is not. They run through the real CLI against real servers, with failpoints for the kills.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Stack
from tests.e2e.test_power_cut import power_cut
from tests.e2e.test_restore_crash import assert_serves, kill_at, set_names, two_generations
from tests.integration.test_backups import (
    LEGACY,
    LEGACY_PASSWORD,
    encrypted_stack,
    seed,
    sets,
    snapshot,
)
from tests.integration.test_docker_runtime import docker_stack, engine  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e


def test_a_restore_on_boot_whose_journal_is_lost_is_not_served_empty(stack: Stack) -> None:
    """The restoring marker is the defence "independent of the journal": it must be there from initdb on.

    It used to be written only after the fresh server had started, so a reconciler killed just after
    initdb whose journal is then lost (a state directory restored from a copy, a planted journal
    replaced) left a plain initialised PostgreSQL that the next apply started and served empty."""
    _, newest = two_generations(stack)
    power_cut(stack)
    kill_at(stack, "restore.boot.postgres.init", "apply")
    (stack.dir / ".reconciler" / "journal.json").unlink()
    stack.cli("apply")
    assert snapshot(stack) == newest, "an empty, freshly initialised database was served as data"


def verify_all(stack: Stack) -> None:
    """Verify every set, as the daemon does after each backup: only verified sets count for retention
    (``daemon.verify_new_sets``), and a retention that counts nothing deletes nothing."""
    for name in set_names(stack):
        stack.cli("verify", name)


def test_prune_during_an_interrupted_restore_keeps_the_set_it_restores(stack: Stack) -> None:
    """Past its point of no return a deliberate restore has superseded every newer set; retention did not
    know that, kept the (superseded) newest sets and deleted the chosen one, so the next power cut found
    nothing it may restore: the data the user chose was gone from every store."""
    encrypted_stack(stack, keep_last=1)
    seed(stack, 3000)
    stack.cli("backup", "--trigger", "older")
    older = snapshot(stack)
    seed(stack, 500)
    stack.cli("backup", "--trigger", "newer")
    verify_all(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    kill_at(stack, "restore.commit-redis.after", "restore", chosen, "--yes")
    stack.cli("prune", check=None)  # a cron job, or a hand-run prune
    assert chosen in set_names(stack), "retention deleted the set an incomplete restore depends on"
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == older


def test_retention_keeps_the_set_restore_on_boot_would_choose(stack: Stack) -> None:
    """A completed restore whose post-restore backup is gone (deleted, or it failed): retention's
    'newest' anchor must be the newest set restore on boot may use, not a superseded one."""
    encrypted_stack(stack, keep_last=1)
    seed(stack, 3000)
    stack.cli("backup", "--trigger", "older")
    older = snapshot(stack)
    seed(stack, 500)
    stack.cli("backup", "--trigger", "newer")
    verify_all(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    stack.cli("restore", chosen, "--yes", "--no-safety-backup")
    post = next(s["name"] for s in sets(stack) if s["trigger"] == "post-restore")
    for member in (stack.dir / "data" / "backups").glob(f"{post}.*"):
        member.unlink()  # the post-restore set lost (a full disk when it was taken, a hand-deleted file)
    stack.cli("prune")
    assert chosen in set_names(stack), "retention deleted the only set restore on boot may use"
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == older


def test_a_legacy_restore_survives_a_power_cut(stack: Stack) -> None:
    """`restore --legacy` is a deliberate restore too: the next boot must not bring the old data back."""
    encrypted_stack(stack)
    seed(stack, 10)
    stack.cli("backup")
    stack.cli(
        "restore",
        "--legacy",
        str(LEGACY),
        "--password-env",
        "LEGACY_PW",
        "--yes",
        env={"LEGACY_PW": LEGACY_PASSWORD},
    )
    power_cut(stack)
    stack.cli("apply")
    with psycopg.connect(**stack.pg_conninfo("app_db")) as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()
    assert users == (500,), "the next boot rolled the legacy restore back"


def test_a_legacy_restore_waits_for_an_interrupted_restore(stack: Stack) -> None:
    """The legacy path is not journaled; it must not start on top of a restore that did not complete
    (its pre-restore backup would copy data no set holds, and the resumed restore would overwrite it)."""
    older, _ = two_generations(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    kill_at(stack, "restore.commit-postgres.after", "restore", chosen, "--yes")
    refused = stack.cli(
        "restore",
        "--legacy",
        str(LEGACY),
        "--password-env",
        "LEGACY_PW",
        "--yes",
        check=1,
        env={"LEGACY_PW": LEGACY_PASSWORD},
    )
    assert "apply" in refused.stderr
    stack.cli("apply")
    assert snapshot(stack) == older


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_deliberate_restore_of_a_set_dated_in_the_future_survives_a_power_cut(stack: Stack) -> None:
    """The clock was a day ahead when a set was taken (a board without an RTC, a bad NTP server), and
    the user restores exactly that set. Only sets *newer* than it were superseded, so the pre-restore
    set and the set taken after it (dated in the past, hence tried first at boot) were restored by the
    next boot: the data the user had just discarded came back."""
    assert LIBFAKETIME.exists(), f"libfaketime is missing at {LIBFAKETIME}: apt-get install faketime"
    encrypted_stack(stack)
    seed(stack, 3000)
    stack.cli("backup", "--trigger", "ahead", env={"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+1d"})
    ahead = snapshot(stack)
    seed(stack, 500)
    stack.cli("backup", "--trigger", "newer")
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "ahead")
    kill_at(stack, "restore.commit-redis.after", "restore", chosen, "--yes")
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == ahead, "the next boot restored data the user had discarded"


def test_a_mode_change_while_a_restore_is_interrupted_does_not_mix_two_sets(stack: Stack) -> None:
    """ "changes to state.yaml are planned after it": a restore killed past its point of no return, then
    state.yaml switched to disk mode. The resume looked for the data in the *new* mode's directories,
    found none, called the restore abandoned (no power cut happened), and the switch then carried
    PostgreSQL from the chosen set and Redis from the discarded data over to disk."""
    older, _ = two_generations(stack)  # Redis differs between the two sets too
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    kill_at(stack, "restore.commit-postgres.after", "restore", chosen, "--yes")
    stack.edit(mode="disk")
    stack.cli("apply")
    stack.cli("apply")  # the switch, planned once the restore reached its safe point
    assert snapshot(stack) == older, "PostgreSQL and Redis serve different sets"
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert sorted(h["status"] for h in history if h["kind"] == "restore") == ["done"]


def test_the_listing_says_which_sets_restore_on_boot_will_not_use(stack: Stack) -> None:
    """After a deliberate restore, `backups` listed the discarded sets (the newest ones) like any other:
    a reader would expect the next boot to restore the newest of them."""
    two_generations(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    stack.cli("restore", chosen, "--yes")
    listed = {s["trigger"]: s["superseded"] for s in sets(stack)}
    assert listed == {
        "first": False,  # the set a fresh stack's apply takes, older than the chosen one
        "older": False,
        "newer": True,
        "pre-restore": True,
        "post-restore": False,
    }
    assert "superseded" in stack.cli("backups").stdout


def test_a_restore_killed_during_its_post_restore_backup_completes(stack: Stack) -> None:
    """The one backup of a restore without a safety backup is the post-restore one: kill it half-written."""
    older, _ = two_generations(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    sets_before = set_names(stack)
    kill_at(stack, "backup.between-members", "restore", chosen, "--yes", "--no-safety-backup")
    stack.cli("apply")
    assert any(s["trigger"] == "post-restore" and s["complete"] for s in sets(stack))
    assert_serves(stack, older, sets_before)


def test_a_planted_journal_is_refused_with_its_cause(stack: Stack) -> None:
    """A journal.json that is not one of ours (truncated by hand, another version, planted) must not
    crash every command with a traceback, nor be acted on."""
    encrypted_stack(stack)
    (stack.dir / ".reconciler" / "journal.json").write_text('{"status": "running", "kind": "restore"}')
    for command in ("plan", "apply", "status"):
        result = stack.cli(command, check=None)
        assert "Traceback" not in result.stderr, f"{command}:\n{result.stderr[-1500:]}"
        assert "journal.json" in result.stderr + result.stdout, f"{command} does not name the cause"


@pytest.mark.parametrize("kill", [None, "restore.commit-redis.after"])
def test_undoing_a_restore_with_its_pre_restore_set_survives_a_power_cut(
    stack: Stack, kill: str | None
) -> None:
    """The documented undo: restore the pre-restore set. The next boot (also right after the undo's
    commit, before its post-restore set) brings back the data from before the first restore."""
    _, newer = two_generations(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    stack.cli("restore", chosen, "--yes")
    undo = next(s["name"] for s in sets(stack) if s["trigger"] == "pre-restore")
    if kill:
        kill_at(stack, kill, "restore", undo, "--yes", "--no-safety-backup")
    else:
        stack.cli("restore", undo, "--yes", "--no-safety-backup")
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == newer


@pytest.mark.parametrize("point", [None, "restore.boot.postgres.start"])
def test_restore_on_boot_on_the_docker_runtime(
    docker_stack: Stack,  # noqa: F811 (the fixture imported above)
    engine: Any,  # noqa: F811
    point: str | None,
) -> None:
    """The journaled restore on boot with containers (the image's entrypoint initialises PostgreSQL on
    its first start, so the data directory must stay empty until then): a reboot, then a kill mid-way."""
    stack = docker_stack
    stack.cli("apply")
    seed(stack, 400)
    expected = snapshot(stack)
    stack.cli("backup")
    for service in ("postgres", "redis"):
        engine.containers.get(f"{stack.document()['stack']}-{service}").kill()
    for entry in stack.ram_root.iterdir():  # the tmpfs comes back empty
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if point:
        kill_at(stack, point, "apply")
        stack.cli("plan", check=2)
    stack.cli("apply")
    stack.cli("plan", check=0)
    assert snapshot(stack) == expected
