"""Issue 14: a stale backup and RAM headroom below ``ram.min_headroom`` are drift, through the real CLI.

`plan` shows them with their numbers and the exit code follows (2: apply heals it, 1: it cannot);
`apply` heals what the spec says how to heal. The clock is moved with RECONCILER_TEST_CLOCK_OFFSET
(system/clock.py), the way a Raspberry Pi's clock jumps; a tight tmpfs is a real size-limited mount.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from tests.conftest import Stack

HOUR = 3600


def clock(seconds: float) -> dict[str, str]:
    return {"RECONCILER_TEST_CLOCK_OFFSET": str(seconds)}


def sets(stack: Stack, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return list(json.loads(stack.cli("backups", "-o", "json", env=env).stdout)["sets"])


def plan_json(stack: Stack, check: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    return dict(json.loads(stack.cli("plan", "-o", "json", check=check, env=env).stdout))


def test_a_stale_backup_is_drift_that_plan_shows_and_apply_heals(stack: Stack) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    # RAM mode with no backup at all is drift too: the first apply ends with a first set
    first = sets(stack)
    assert [s["trigger"] for s in first] == ["first"] and first[0]["complete"]
    stack.cli("plan", check=0)

    # 3 h 12 min later (stale_after is 2 h): plan says so, with the numbers, and exits 2
    later = clock(3 * HOUR + 12 * 60)
    text = stack.cli("plan", check=2, env=later).stdout
    assert (
        f"take a backup set (the newest set {first[0]['name']} is 3 h 12 min old, stale_after 2 h 0 min)"
        in (" ".join(text.split()))
    )
    actions = plan_json(stack, 2, later)["actions"]
    assert [a["kind"] for a in actions] == ["TakeBackup"]
    stack.cli("apply", "--dry-run", check=2, env=later)
    # apply heals it through the engine's backup path, and is in sync afterwards
    stack.cli("apply", env=later)
    healed = sets(stack, later)
    assert len(healed) == 2 and healed[0]["trigger"] == "stale" and healed[0]["complete"]
    stack.cli("plan", check=0, env=later)


def test_a_clock_behind_the_newest_set_takes_one_backup_not_a_storm(stack: Stack) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    newest = sets(stack)[0]["name"]
    # the Pi boots 5 h behind: the newest set is "from the future", its age cannot be measured
    behind = clock(-5 * HOUR)
    text = " ".join(stack.cli("plan", check=2, env=behind).stdout.split())
    assert f"the newest set {newest} is dated" in text and "after the host clock" in text
    stack.cli("apply", env=behind)
    taken = sets(stack, behind)
    assert len(taken) == 2 and taken[0]["trigger"] == "stale"
    # the new set sorts after by its sequence and dates from the clock: ages are measured again
    for _ in range(2):
        stack.cli("plan", check=0, env=behind)
        stack.cli("apply", env=behind)
    assert len(sets(stack, behind)) == 2


def test_ram_headroom_below_the_minimum_is_reported_per_check_and_blocks_in_sync(stack: Stack) -> None:
    document = stack.default_document(mount="always")  # a real tmpfs of 256 MiB at ram.path
    stack.write(document)
    stack.cli("apply")
    stack.cli("plan", check=0)

    # 240 MiB: the host has that much memory available, the 256 MiB tmpfs has not that much free
    document["ram"]["min_headroom"] = "240MiB"
    stack.write(document)
    result = stack.cli("plan", check=1)
    text = " ".join(result.stdout.split())
    assert f"free on the tmpfs at {stack.ram_root}" in text and "below ram.min_headroom 240 MiB" in text
    assert "of host memory available" not in text
    assert plan_json(stack, 1)["unhealable"]
    failed = stack.cli("apply", check=1)
    assert "apply cannot heal" in failed.stderr and "free on the tmpfs" in failed.stderr
    assert stack.status()["services"]["postgres"]["running"], "the rest of the stack is left as it is"

    # beyond the host's memory too: both checks fail, each with its own numbers
    document["ram"]["min_headroom"] = "100TiB"
    stack.write(document)
    text = " ".join(stack.cli("plan", check=1).stdout.split())
    assert "of host memory available (MemAvailable), below ram.min_headroom 100 TiB" in text
    assert f"free on the tmpfs at {stack.ram_root}" in text


def test_ram_pressure_with_fallback_to_disk_is_healed_by_apply(stack: Stack) -> None:
    document = stack.default_document()
    stack.write(document)
    stack.cli("apply")
    client = redis.Redis(port=stack.redis_port)
    client.set("kept", "across the fallback")
    document["ram"].update(min_headroom="100TiB", on_pressure="fallback-to-disk")
    stack.write(document)
    text = " ".join(stack.cli("plan", check=2).stdout.split())
    assert "fall back to disk mode until state.yaml is edited" in text
    assert "switch postgres and redis from ram to disk mode" in text
    stack.cli("apply")
    status = stack.status()
    assert status["mode"] == "disk" and status["modeOverride"]["mode"] == "disk"
    assert not status["services"]["redis"]["on_tmpfs"]
    assert client.get("kept") == b"across the fallback"
    stack.cli("plan", check=0)  # the override holds: no fight back into RAM


def test_a_pressure_fallback_takes_its_pre_switch_backup_past_max_set_size_and_says_so(stack: Stack) -> None:
    """The database grew past `backup.max_set_size`; RAM pressure with `on_pressure: fallback-to-disk`
    must still move it to disk (its pre-switch set is exempt, an event says so), while a manual backup
    stays limited."""
    from tests.integration.test_backups import pg

    document = stack.default_document()
    document["backup"]["max_set_size"] = "64KiB"
    stack.write(document)
    stack.cli("apply")
    with pg(stack) as conn:
        conn.execute(  # ~380 KB that no compression shrinks
            "CREATE TABLE blob AS SELECT (SELECT decode(string_agg(md5(random()::text || g || h), ''), 'hex') "
            "FROM generate_series(1, 60) h) AS b FROM generate_series(1, 400) g"
        )
    document["ram"].update(min_headroom="100TiB", on_pressure="fallback-to-disk")
    stack.write(document)
    stack.cli("apply")
    status = stack.status()
    assert status["mode"] == "disk" and status["modeOverride"]["mode"] == "disk"
    pre_switch = [s for s in sets(stack) if s["trigger"] == "pre-switch"]
    assert len(pre_switch) == 1 and pre_switch[0]["size"] > 64 * 1024
    events = json.loads(stack.cli("events", "-n", "0", "-o", "json").stdout)
    exempt = [e for e in events if e["reason"] == "SizeLimitExempt"]
    assert len(exempt) == 1 and pre_switch[0]["name"] in exempt[0]["message"]
    assert "max_set_size" in stack.cli("backup", check=1).stderr
