"""The daemon carries one failure code on every channel: the event, the status file, the metrics and
the webhook ping say the same word (docs/FAILURES.md)."""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.e2e.test_daemon import RunningDaemon, _get, _status_file, daemon_stack, daemons  # noqa: F401
from tests.integration.test_failure_codes import random_table
from tests.support.webhook import webhook_receiver

pytestmark = pytest.mark.e2e


def test_a_too_large_backup_is_too_large_on_every_channel_and_an_invalid_edit_is_spec_invalid(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811 (the fixture)
) -> None:
    with webhook_receiver() as hook:
        document = daemon_stack(stack)
        document["backup"]["max_set_size"] = "64KiB"
        stack.write(document)
        stack.cli("apply")
        for taken in (stack.dir / "data" / "backups").iterdir():  # apply's first set: the daemon owes one
            if taken.is_file():
                taken.unlink()
        random_table(stack, 2)
        url = hook.url("/ping/hook")
        daemon = RunningDaemon(stack, env={"RECONCILER_WEBHOOK_URL": url})
        daemons.append(daemon)

        failed = daemon.wait_event("BackupFailed", timeout=120)
        assert failed["code"] == "too_large", failed
        assert failed["limit_bytes"] == 64 * 1024 and failed["reached_bytes"] > 64 * 1024
        assert not list((stack.dir / "data" / "backups").glob("*.manifest.json"))
        status = daemon.wait_for("the status file", lambda: _status_file(stack).get("lastFailure"))
        assert status["code"] == "too_large"
        fresh = next(c for c in _status_file(stack)["conditions"] if c["type"] == "BackupFresh")
        assert fresh["status"] == "False" and fresh["code"] == "too_large"
        code, text = _get(document["daemon"]["metrics_port"], "/metrics")
        assert code == 200
        assert 'reconciler_failures_total{code="too_large"}' in text
        assert 'reconciler_last_failure{code="too_large"} 1' in text
        assert "# TYPE reconciler_failures_total counter" in text
        fail_pings = [p for p in hook.pings if p[0].endswith("/fail")]
        assert fail_pings and fail_pings[0][1].startswith("[too_large] ") and fail_pings[0][2] == "too_large"

        mark = len(daemon.events())
        stack.state_file.write_text(stack.state_file.read_text() + "unknown_key: 1\n")
        invalid = daemon.wait_event("SpecInvalid", after=mark)
        assert invalid["code"] == "spec_invalid"
        spec_valid = next(c for c in _status_file(stack)["conditions"] if c["type"] == "SpecValid")
        assert spec_valid["code"] == "spec_invalid"

        assert daemon.stop() in (0, 1)  # the final backup may fail too_large as well


def test_a_shutdown_that_outlives_its_timeout_reports_the_final_backup_it_cut_short(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811 (the fixture)
) -> None:
    daemon_stack(stack, shutdown_timeout="10s")
    stack.cli("apply")  # its first set: the daemon owes no backup before the final one
    slow_final_backup = {"RECONCILER_FAILPOINTS": "backup.between-members=sh:sleep 25"}
    daemon = RunningDaemon(stack, env=slow_final_backup)
    daemons.append(daemon)
    daemon.wait_event("Started")  # its signal handlers are in place

    assert daemon.stop() == 3  # EXIT_SHUTDOWN_TIMEOUT: the watchdog ended it, not the backup
    timed_out = next(e for e in daemon.events() if e["reason"] == "ShutdownTimeout")
    assert timed_out["code"] == "dump_error", timed_out
    assert "daemon.shutdown_timeout (10 s)" in timed_out["message"]
