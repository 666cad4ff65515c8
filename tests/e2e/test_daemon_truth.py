"""The daemon tells the truth and heals in seconds (issue 14).

A real ``reconciler daemon`` subprocess against real servers, as in ``test_daemon.py``: the world is
changed behind its back and the tests wait, polling with deadlines, for the events, status, metrics
and data that prove what it did. The resync is long (5 minutes) wherever the point is that the daemon
must not wait for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.conftest import Stack, free_port
from tests.e2e.test_daemon import RunningDaemon, _get, _status_file, daemon_stack, daemons, local_sets
from tests.integration.test_backups import seed
from tests.integration.test_docker_runtime import docker_document, docker_stack, engine

pytestmark = pytest.mark.e2e

__all__ = ["daemons", "docker_stack", "engine"]  # fixtures, re-used from their modules

SLOW_RESYNC = "5m"


def metrics(port: int) -> dict[str, float]:
    code, text = _get(port, "/metrics")
    assert code == 200, text
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    }


def redis_pid(stack: Stack) -> int:
    return int((stack.dir / ".reconciler" / "run" / "redis" / "redis.pid").read_text())


def postgres_pid(stack: Stack) -> int:
    pidfile = next(Path(stack.ram_root).rglob("postmaster.pid"))
    return int(pidfile.read_text().split()[0])


def redis_serves(stack: Stack) -> bool:
    try:
        return bool(redis.Redis(port=stack.redis_port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def postgres_serves(stack: Stack) -> bool:
    try:
        with psycopg.connect(**stack.pg_conninfo(), connect_timeout=1) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def start(stack: Stack, daemons: list[RunningDaemon], env: dict[str, str] | None = None) -> RunningDaemon:
    daemon = RunningDaemon(stack, env)
    daemons.append(daemon)
    daemon.wait_event("Converged", timeout=120)
    return daemon


@pytest.mark.parametrize("service", ["redis", "postgres"])
def test_a_killed_service_serves_again_without_waiting_for_the_resync(
    stack: Stack, daemons: list[RunningDaemon], service: str
) -> None:
    daemon_stack(stack, resync=SLOW_RESYNC)
    daemon = start(stack, daemons)
    daemon.wait_event("BackupTaken")  # the first pass is over: the daemon is idle
    pid = redis_pid(stack) if service == "redis" else postgres_pid(stack)
    serves = redis_serves if service == "redis" else postgres_serves
    mark = len(daemon.events())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    exited = daemon.wait_event("ProcessExited", after=mark, timeout=30)
    assert f"{service} (pid {pid}) exited" in exited["message"] and exited["type"] == "Warning"
    daemon.wait_for(f"{service} serving again", lambda: serves(stack), timeout=30)
    # A generous bound for a loaded CI machine, far below the 5-minute resync the old daemon waited for;
    # bench/daemon.py measures the real figure (median of 10).
    assert time.monotonic() - killed < 30
    daemon.wait_event("Converged", after=mark, timeout=30)
    assert (redis_pid(stack) if service == "redis" else postgres_pid(stack)) != pid


def test_status_recomputes_ready_from_a_fresh_observation(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    stack.cli("apply")
    os.kill(redis_pid(stack), signal.SIGKILL)
    document = stack.status()
    ready = next(c for c in document["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ServiceDown", ready
    assert "redis is not running" in ready["message"]
    text = stack.cli("status", env={"NO_COLOR": "1"}).stdout
    assert "Ready=False ServiceDown" in text and "Ready=True" not in text, text
    stack.cli("apply")
    ready = next(c for c in stack.status()["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready


def test_healthz_and_metrics_report_a_service_that_stays_down(
    stack: Stack, daemons: list[RunningDaemon]
) -> None:
    document = daemon_stack(stack, resync=SLOW_RESYNC)
    port = document["daemon"]["metrics_port"]
    daemon = start(stack, daemons)
    daemon.wait_event("BackupTaken")
    assert daemon.wait_for("healthz 200", lambda: _get(port, "/healthz")[0] == 200)
    figures = metrics(port)
    assert figures['reconciler_service_up{service="redis"}'] == 1
    assert figures['reconciler_service_up{service="postgres"}'] == 1
    assert figures["reconciler_spec_valid"] == 1
    # The backup age grows between scrapes, with no pass in between (the resync is 5 minutes).
    passes = _status_file(stack)["daemon"]["passes"]
    first = figures["reconciler_backup_age_seconds"]
    daemon.wait_for(
        "the backup age to grow", lambda: metrics(port)["reconciler_backup_age_seconds"] >= first + 1.5
    )
    assert _status_file(stack)["daemon"]["passes"] == passes
    # Redis dies and cannot start again (its log path is a directory: redis-server exits 1, a failure
    # the daemon retries, so it is not Stalled). /healthz must fail and the metrics must say why.
    log_path = stack.dir / ".reconciler" / "run" / "redis" / "redis.log"
    log_path.unlink()
    log_path.mkdir()
    mark = len(daemon.events())
    os.kill(redis_pid(stack), signal.SIGKILL)
    daemon.wait_event("ReconcileFailed", after=mark, timeout=60)
    code, body = _get(port, "/healthz")
    assert code == 503 and "redis down" in body, body
    figures = metrics(port)
    assert figures['reconciler_service_up{service="redis"}'] == 0
    assert figures['reconciler_service_up{service="postgres"}'] == 1
    assert figures["reconciler_last_error_timestamp_seconds"] > time.time() - 120
    assert figures["reconciler_stalled"] == 0
    # Fixed by hand: the next retry heals it and everything says so.
    log_path.rmdir()
    daemon.wait_for("redis serving again", lambda: redis_serves(stack), timeout=60)
    daemon.wait_for("healthz 200 again", lambda: _get(port, "/healthz")[0] == 200, timeout=30)
    assert metrics(port)['reconciler_service_up{service="redis"}'] == 1


def retention_of_one(document: dict[str, Any]) -> None:
    document["backup"]["retention"] = {
        "keep_last": 1,
        "keep_hourly": 0,
        "keep_daily": 0,
        "keep_weekly": 0,
        "keep_monthly": 0,
    }


def test_apply_carries_out_the_retention_its_own_switch_made_due(stack: Stack) -> None:
    document = stack.default_document("ram")
    retention_of_one(document)
    # Retention counts verified sets only when verification is on; here it counts the sets it vouches
    # for, so the switch's own sets make the old one due within the same apply.
    document["daemon"] = {**document.get("daemon", {}), "verify_new_sets": False}
    stack.write(document)
    stack.cli("apply")
    seed(stack, 100)
    stack.cli("backup")
    before = local_sets(stack)
    assert len(before) == 2  # apply's first set (no backup at all is drift) and this one
    stack.edit(mode="disk")
    result = stack.cli("apply", check=None)
    assert result.returncode == 0, result.stderr
    assert "did not converge" not in result.stderr
    after = local_sets(stack)
    assert len(after) == 1 and after != before, after  # the switch's own sets rotated the old one away
    assert stack.cli("plan", check=0)
    status = stack.status()
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False", stalled


def test_a_switch_failing_at_verify_stalls_without_retrying_and_every_failure_is_an_event(
    stack: Stack, daemons: list[RunningDaemon]
) -> None:
    assert shutil.which("redis-cli"), "redis-cli is needed to damage the new copy"
    daemon_stack(stack, resync="2s")
    # Every switch this daemon attempts writes a key into the new Redis copy before verify: the
    # fingerprint no longer matches, verify fails and the switch rolls back.
    damage = f"switch.verify.before=sh:redis-cli -p {stack.redis_port} set intruder 1"
    daemon = start(stack, daemons, env={"RECONCILER_FAILPOINTS": damage})
    seed(stack, 100)
    mark = len(daemon.events())
    stack.edit(mode="disk")
    stalled = daemon.wait_event("Stalled", after=mark, timeout=180)
    assert "failed at step verify" in stalled["message"], stalled
    sets_after_failure = local_sets(stack)
    # Writes go on (the database grows, files change size): not a reason to try the switch again.
    seed(stack, 100)
    passes = _status_file(stack)["daemon"]["passes"]
    daemon.wait_for(
        "four more passes", lambda: _status_file(stack)["daemon"]["passes"] >= passes + 4, timeout=60
    )
    later = daemon.reasons()[mark:]
    assert later.count("Reconciling") == 1 and later.count("Stalled") == 1, later
    assert local_sets(stack) == sets_after_failure
    assert _status_file(stack)["daemon"]["stalled"] is True
    # A change of state.yaml is a new chance; its failure is reported again.
    mark = len(daemon.events())
    stack.state_file.write_text(stack.state_file.read_text() + "# try again\n")
    again = daemon.wait_event("Stalled", after=mark, timeout=180)
    assert "failed at step verify" in again["message"]
    assert daemon.reasons()[mark:].count("Reconciling") == 1


def test_a_removed_container_is_recreated_without_waiting_for_the_resync(
    docker_stack: Stack, engine: Any, daemons: list[RunningDaemon]
) -> None:
    stack = docker_stack
    document = docker_document(stack)
    document["daemon"] = {"resync": SLOW_RESYNC, "backoff_max": "4s", "metrics_port": free_port()}
    document["daemon"]["verify_new_sets"] = False
    stack.write(document)
    daemon = start(stack, daemons)
    daemon.wait_event("BackupTaken")  # the first pass is over: the daemon is idle
    mark = len(daemon.events())
    container = f"{document['stack']}-redis"
    engine.containers.get(container).remove(force=True)
    exited = daemon.wait_event("ProcessExited", after=mark, timeout=30)
    assert f"container {container}" in exited["message"], exited
    daemon.wait_for("redis serving again", lambda: redis_serves(stack), timeout=60)
    daemon.wait_event("Converged", after=mark, timeout=30)
    assert engine.containers.get(container).status == "running"
