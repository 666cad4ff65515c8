"""The daemon against a real stack: it converges, heals and reports without anyone running a command.

Each test starts ``reconciler daemon`` as a real subprocess with a short resync, changes the world or
state.yaml behind its back, and waits (with a deadline, polling observable files) for the events,
status and data that prove it reacted. Nothing here sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Stack, free_port
from tests.e2e.test_power_cut import power_cut
from tests.integration.test_backups import seed, snapshot, with_keys
from tests.integration.test_gdrive import authorized_user_file
from tests.support.gdrive_emulator import DriveEmulator
from tests.support.webhook import webhook_receiver

pytestmark = pytest.mark.e2e


class RunningDaemon:
    def __init__(self, stack: Stack, env: dict[str, str] | None = None) -> None:
        if "metrics_port" not in (stack.document().get("daemon") or {}):
            raise AssertionError(
                "set daemon.metrics_port (free_port() or None): the default 9465 is one port for every "
                "daemon of every parallel test worker"
            )
        self.stack = stack
        self.log = open(stack.dir / "daemon.log", "w")  # noqa: SIM115 (closed in stop)
        full_env = {**os.environ, **stack.env, **(env or {})}
        full_env.pop("RECONCILER_STATE", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "-f", str(stack.state_file), "daemon"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def events(self) -> list[dict[str, Any]]:
        path = self.stack.dir / ".reconciler" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def reasons(self) -> list[str]:
        return [str(e["reason"]) for e in self.events()]

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.process.returncode}) while waiting for {what}\n{self.output()}"
                )
            time.sleep(0.1)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}; events: {self.reasons()}\n{self.output()}"
        )

    def wait_event(self, reason: str, after: int = 0, timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events()[after:] if e["reason"] == reason), None)

        return dict(self.wait_for(f"event {reason}", found, timeout))

    def output(self) -> str:
        self.log.flush()
        return (self.stack.dir / "daemon.log").read_text()[-4000:]

    def stop(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.log.close()


@pytest.fixture
def daemons() -> Iterator[list[RunningDaemon]]:
    started: list[RunningDaemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        daemon.log.close()


def daemon_stack(stack: Stack, **daemon: Any) -> dict[str, Any]:
    document = stack.default_document("ram")
    document["daemon"] = {
        "resync": "2s",
        "backoff_max": "4s",
        "metrics_port": free_port(),
        "verify_new_sets": False,
        **daemon,
    }
    stack.write(document)
    return document


def start(stack: Stack, daemons: list[RunningDaemon], env: dict[str, str] | None = None) -> RunningDaemon:
    daemon = RunningDaemon(stack, env)
    daemons.append(daemon)
    daemon.wait_event("Converged")
    return daemon


def local_sets(stack: Stack) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (stack.dir / "data" / "backups").glob("*.manifest.json"))


def test_an_edit_of_the_mode_converges_without_a_command(stack: Stack, daemons: list[RunningDaemon]) -> None:
    daemon_stack(stack)
    daemon = start(stack, daemons)
    seed(stack, 300)
    before = snapshot(stack)
    mark = len(daemon.events())
    stack.edit(mode="disk")
    daemon.wait_event("Converged", after=mark, timeout=120)
    status = stack.status()
    assert status["mode"] == "disk" and status["in_sync"], status
    assert status["services"]["postgres"]["data_dir"] == str(stack.dir / "data" / "postgres")
    assert snapshot(stack) == before
    changed = next(e for e in daemon.events()[mark:] if e["reason"] == "Reconciling")
    assert "state.yaml changed" in changed["message"]
    assert daemon.stop() == 0


def test_deleted_backups_are_replaced_within_one_cadence(stack: Stack, daemons: list[RunningDaemon]) -> None:
    document = daemon_stack(stack)
    document["backup"]["cadence"] = "8s"
    stack.write(document)
    daemon = start(stack, daemons)
    first = daemon.wait_event("BackupTaken")
    assert "no complete local backup set" in first["message"]
    for path in (stack.dir / "data" / "backups").iterdir():
        path.unlink()
    mark = len(daemon.events())
    started = time.monotonic()
    again = daemon.wait_event("BackupTaken", after=mark, timeout=30)
    assert time.monotonic() - started < 8 + 2 * 1.1 + 5  # cadence + one resync with jitter + the backup
    assert local_sets(stack), again
    status = stack.status()
    fresh = next(c for c in status["conditions"] if c["type"] == "BackupFresh")
    assert fresh["status"] == "True"
    assert status["nextScheduledBackup"]


def test_a_killed_postgres_with_a_wiped_tmpfs_is_restored_by_itself(
    stack: Stack, daemons: list[RunningDaemon]
) -> None:
    daemon_stack(stack)
    daemon = start(stack, daemons)
    seed(stack, 500)
    stack.cli("backup")
    before = snapshot(stack)
    mark = len(daemon.events())
    # A power cut is instantaneous: the daemon (which heals a killed service within a second) must not
    # see the moment between the kill and the wipe, so it is frozen for it.
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        power_cut(stack)
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    daemon.wait_for(
        "a restore step",
        lambda: any(e["reason"] == "Step" and "restore" in e["message"] for e in daemon.events()[mark:]),
    )
    daemon.wait_event("Converged", after=mark)
    assert snapshot(stack) == before


def test_an_invalid_edit_is_reported_and_the_last_valid_spec_is_kept(
    stack: Stack, daemons: list[RunningDaemon]
) -> None:
    daemon_stack(stack)
    daemon = start(stack, daemons)
    mark = len(daemon.events())
    text = stack.state_file.read_text()
    stack.state_file.write_text(text.replace("mode: ram", "mode: rma").replace("tmpfs_size", "tmpfs_sise"))
    event = daemon.wait_event("SpecInvalid", after=mark)
    assert "mode" in event["message"] and "tmpfs_sise" in event["message"]
    status = stack.dir / ".reconciler" / "status.json"
    spec_valid = next(c for c in json.loads(status.read_text())["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False"
    # Still converging on the last valid spec: a redis killed now is started again in RAM mode.
    redis_pid = int((stack.dir / ".reconciler" / "run" / "redis" / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGKILL)
    daemon.wait_event("Converged", after=mark)
    assert daemon.process.poll() is None
    stack.state_file.write_text(text)
    daemon.wait_event("SpecValid", after=mark)
    assert daemon.reasons()[mark:].count("SpecInvalid") == 1  # reported once, not every pass


def test_sigterm_takes_a_final_backup_and_exits_zero(stack: Stack, daemons: list[RunningDaemon]) -> None:
    daemon_stack(stack)
    daemon = start(stack, daemons)
    daemon.wait_event("BackupTaken")
    seed(stack, 100)
    before = snapshot(stack)
    assert daemon.stop() == 0
    final = [name for name in local_sets(stack) if name.endswith("-shutdown")]
    assert len(final) == 1, local_sets(stack)
    assert daemon.reasons()[-2:] == ["FinalBackup", "Stopped"]
    # The final set holds the last writes: restore it into a wiped RAM and compare.
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == before
    assert stack.status()["daemon"]["running"] is False


def test_a_second_daemon_for_the_same_stack_exits_with_a_clear_message(
    stack: Stack, daemons: list[RunningDaemon]
) -> None:
    daemon_stack(stack)
    start(stack, daemons)
    second = stack.cli("daemon", check=1)
    assert "already runs for stack" in second.stderr and "one daemon per stack" in second.stderr


def test_drive_outage_then_recovery_uploads_the_missed_sets(
    stack: Stack, daemons: list[RunningDaemon], emulator: DriveEmulator
) -> None:
    folder = emulator.make_folder()
    recipient = with_keys(stack)
    document = daemon_stack(stack)
    document["backup"] = {
        "cadence": "5s",
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "stores": {
            "gdrive": {
                "enabled": True,
                "folder_id": folder,
                "credentials_file": authorized_user_file(stack.dir / "keys" / "gdrive.json", emulator),
                "api_url": emulator.url,
            }
        },
    }
    stack.write(document)
    daemon = start(stack, daemons)
    daemon.wait_event("OffsiteSynced")
    emulator.stop()
    mark = len(daemon.events())
    daemon.wait_event("OffsiteSyncFailed", after=mark, timeout=90)
    daemon.wait_for(
        "a backup taken during the outage",
        lambda: sum(1 for e in daemon.events()[mark:] if e["reason"] == "BackupTaken") >= 1,
        timeout=60,
    )
    missed = local_sets(stack)
    emulator.start_again()
    recovered = len(daemon.events())
    daemon.wait_event("OffsiteSynced", after=recovered, timeout=60)
    on_drive = {name.split(".")[0] for name in emulator.names_in(folder) if name.endswith(".manifest.json")}
    assert set(missed) <= on_drive, (missed, on_drive)
    offsite = next(c for c in stack.status()["conditions"] if c["type"] == "OffsiteInSync")
    assert offsite["status"] == "True"


def test_a_blocked_plan_stalls_without_retrying_until_state_yaml_changes(
    stack: Stack, daemons: list[RunningDaemon]
) -> None:
    document = daemon_stack(stack)
    foreign = stack.dir / "data" / "redis"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("someone else's files")
    document["mode"] = "disk"
    stack.write(document)
    daemon = RunningDaemon(stack)
    daemons.append(daemon)
    stalled = daemon.wait_event("Stalled")
    assert "notes.txt" in stalled["message"] or str(foreign) in stalled["message"]
    port = document["daemon"]["metrics_port"]
    health = daemon.wait_for("healthz", lambda: (answer := _get(port, "/healthz"))[0] and answer)
    assert health[0] == 503 and "stalled" in health[1]
    passes_before = _status_file(stack)["daemon"]["passes"]
    daemon.wait_for(
        "more passes", lambda: _status_file(stack)["daemon"]["passes"] >= passes_before + 2, timeout=20
    )
    assert daemon.reasons().count("Stalled") == 1  # no retry storm: reported once
    mark = len(daemon.events())
    document["mode"] = "ram"
    stack.write(document)
    daemon.wait_event("Converged", after=mark)
    assert _get(document["daemon"]["metrics_port"], "/healthz")[0] == 200


def test_metrics_and_webhook_pings(stack: Stack, daemons: list[RunningDaemon]) -> None:
    with webhook_receiver() as hook:
        document = daemon_stack(stack, verify_new_sets=True)
        url = hook.url("/ping/secret-uuid")
        daemon = start(stack, daemons, env={"RECONCILER_WEBHOOK_URL": url})
        daemon.wait_event("SetVerified")
        code, text = _get(document["daemon"]["metrics_port"], "/metrics")
        assert code == 200
        metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        assert float(metrics["reconciler_backup_age_seconds"]) < 60
        assert int(metrics["reconciler_last_backup_size_bytes"]) > 0
        assert float(metrics["reconciler_ram_headroom_bytes"]) > 64 * 1024**2
        assert metrics['reconciler_mode{mode="ram",runtime="local",stack="' + document["stack"] + '"}'] == "1"
        assert int(metrics["reconciler_reconcile_total"]) >= 1
        assert hook.paths[:2] == ["/ping/secret-uuid/start", "/ping/secret-uuid"]
        assert "secret-uuid" not in daemon.output()
        assert "secret-uuid" not in (stack.dir / ".reconciler" / "events.jsonl").read_text()
        events_out = stack.cli("events", "-n", "0").stdout
        assert "BackupTaken" in events_out and "SetVerified" in events_out


def test_ram_pressure_warns_or_falls_back_to_disk(stack: Stack, daemons: list[RunningDaemon]) -> None:
    document = daemon_stack(stack)
    daemon = start(stack, daemons)
    seed(stack, 200)
    before = snapshot(stack)
    mark = len(daemon.events())
    document["ram"]["min_headroom"] = "100TiB"
    stack.write(document)
    warning = daemon.wait_event("RamPressure", after=mark)
    assert "below ram.min_headroom" in warning["message"]
    assert stack.status()["mode"] == "ram"
    mark = len(daemon.events())
    document["ram"]["on_pressure"] = "fallback-to-disk"
    stack.write(document)
    fallback = daemon.wait_event("RamPressureFallback", after=mark)
    assert fallback.get("code") == "host_fault", fallback  # a failure carries its code (docs/FAILURES.md)
    daemon.wait_for("disk mode", lambda: _status_file(stack).get("mode") == "disk", timeout=120)
    daemon.wait_event("Converged", after=mark, timeout=120)
    status = stack.status()
    assert status["mode"] == "disk" and status["in_sync"] and status["modeOverride"]["mode"] == "disk"
    assert snapshot(stack) == before
    plan = stack.cli("plan", check=0)
    assert "daemon fell back" in plan.stderr
    # The human's next edit ends the override: back to RAM with a sane headroom.
    mark = len(daemon.events())
    document["ram"]["min_headroom"] = "64MiB"
    stack.write(document)
    daemon.wait_for("ram mode again", lambda: _status_file(stack).get("mode") == "ram", timeout=120)
    daemon.wait_event("Converged", after=mark, timeout=120)
    assert stack.status()["modeOverride"] is None
    assert snapshot(stack) == before


def _status_file(stack: Stack) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return dict(json.loads((stack.dir / ".reconciler" / "status.json").read_text()))
    return {}


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


BOMB_LEVELS = 9  # 10^9 values once expanded: gigabytes, and a MemoryError, for a loader that expands aliases


def test_a_hostile_edit_is_refused_and_the_daemon_keeps_running_on_its_last_spec(
    stack: Stack, daemons: list[RunningDaemon]
) -> None:
    """Issue 13: a billion-laughs state.yaml killed the daemon with no event while /healthz said 200, and
    a FIFO in its place would hang it. Each is now a SpecInvalid event; the daemon lives on."""
    document = daemon_stack(stack)
    daemon = start(stack, daemons)
    text = stack.state_file.read_text()
    bomb = ["a0: &a0 [x]"] + [
        f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, BOMB_LEVELS + 1)
    ]
    mark = len(daemon.events())
    stack.state_file.write_text(text + "\n".join(bomb) + "\n")
    event = daemon.wait_event("SpecInvalid", after=mark)
    assert "expands to more than 10000 values" in event["message"], event
    assert daemon.process.poll() is None
    assert _get(document["daemon"]["metrics_port"], "/healthz")[0] == 200

    mark = len(daemon.events())
    stack.state_file.unlink()
    os.mkfifo(stack.state_file)
    event = daemon.wait_event("SpecInvalid", after=mark)
    assert "not a regular file" in event["message"], event
    # Still converging on the last valid spec: a redis killed now is started again.
    redis_pid = int((stack.dir / ".reconciler" / "run" / "redis" / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGKILL)
    daemon.wait_event("Converged", after=mark)

    stack.state_file.unlink()
    stack.state_file.write_text(text)
    daemon.wait_event("SpecValid", after=mark)
    assert daemon.stop() == 0
