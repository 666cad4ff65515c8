"""Host conditions (``hosts:``): validation, the pure decision, and what the planner does with it."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import SpecInvalid
from reconciler.plan.backupsets import BackupSet, StoredFile
from reconciler.plan.hosts import (
    HostFacts,
    HostVerdict,
    decide,
    failed_conditions,
    finishing_here,
    for_this_host,
    hostname_matches,
    owns_pre_split,
    restorable_here,
    retained_here,
    scheduled_here,
    set_services,
)
from reconciler.plan.planner import plan_for_host
from reconciler.spec.loader import parse_state
from reconciler.spec.model import HostsSpec, StateSpec
from tests.unit.test_planner import NOW, fresh_world, worlds

SUFFIX = {"postgres": "postgres.pgdump.zst.age", "redis": "redis.rdb.zst.age"}


def spec_with(stack_hosts: str = "", pg_hosts: str = "", redis_hosts: str = "") -> StateSpec:
    text = "version: 1\nstack: demo\nmode: ram\n"
    if stack_hosts:
        text += f"hosts: {stack_hosts}\n"
    text += "services:\n  postgres: {database: app, user: app, port: 5433, disk_dir: /srv/pg"
    text += f", hosts: {pg_hosts}}}\n" if pg_hosts else "}\n"
    text += "  redis: {port: 6380, disk_dir: /srv/redis"
    text += f", hosts: {redis_hosts}}}\n" if redis_hosts else "}\n"
    text += "ram: {path: /dev/shm/rc/demo, mount: never}\n"
    return parse_state(text, "state.yaml", "/srv")


def problems(hosts_yaml: str) -> list[str]:
    with pytest.raises(SpecInvalid) as caught:
        spec_with(stack_hosts=hosts_yaml)
    return [str(p) for p in caught.value.problems]


# -- validation: hostile input gives a clear error, with its place ---------------------------------


@pytest.mark.parametrize(
    ("hosts_yaml", "expected"),
    [
        ("{hostname: ['pi-[a']}", "opens '[' without closing it"),
        ("{hostname: ['pi-]']}", "closes a ']' it never opened"),
        ("{hostname: ['p[[a]]']}", "opens '[' twice"),
        ("{hostname: ['a b']}", "cannot contain ' '"),
        ("{hostname: ['pi-(kitchen|attic)']}", "not regular expressions"),
        ("{hostname: ['']}", "cannot be empty"),
        ("{hostname: []}", "at least 1 item"),
        ("{hostname: pi-kitchen}", "valid list"),
        ("{file_exists: etc/primary}", "must be an absolute path"),
        ("{env: {'1ROLE': x}}", "does not match the required pattern"),
        ("{env: {ROLE: 1}}", "valid string"),
        ("{}", "at least one condition"),
        ("{hostnames: [pi]}", "hostnames"),
    ],
)
def test_bad_host_conditions_are_refused_with_their_place(hosts_yaml: str, expected: str) -> None:
    found = problems(hosts_yaml)
    assert any(expected in p for p in found), found
    assert all(p.startswith("state.yaml:4:") for p in found), found


def test_a_long_hostname_pattern_is_refused() -> None:
    assert any("at most 253" in p for p in problems("{hostname: ['" + "a" * 254 + "']}"))


# -- the pure decision ------------------------------------------------------------------------------

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
hostnames = st.builds(".".join, st.lists(labels, min_size=1, max_size=3))


@given(hostnames, st.sampled_from([str.upper, str.lower, str.title]))
def test_a_hostname_matches_itself_and_its_short_name_whatever_the_case(name: str, case: Any) -> None:
    assert hostname_matches([case(name)], name)
    assert hostname_matches([case(name.split(".", maxsplit=1)[0])], name)
    assert hostname_matches(["*"], name)


@given(hostnames, st.lists(labels, min_size=1, max_size=4))
def test_hostname_is_any_of_the_patterns(name: str, patterns: list[str]) -> None:
    expected = any(
        fnmatch.fnmatchcase(candidate, p)
        for p in patterns
        for candidate in (name, name.split(".", maxsplit=1)[0])
    )
    assert hostname_matches(patterns, name) == expected


def test_glob_not_regex() -> None:
    assert hostname_matches(["pi-*"], "pi-kitchen")
    assert not hostname_matches(["pi.kitchen"], "pi-kitchen")  # '.' is a dot, not any character
    assert hostname_matches(["pi-[a-k]*"], "PI-Kitchen.lan")
    assert not hostname_matches(["pi-[l-z]*"], "pi-kitchen")


conditions = st.fixed_dictionaries(
    {},
    optional={
        "hostname": st.lists(st.sampled_from(["pi-*", "kitchen", "attic", "*.lan"]), min_size=1, max_size=3),
        "file_exists": st.sampled_from(["/etc/reconciler/primary", "/srv/marker"]),
        "env": st.dictionaries(st.sampled_from(["ROLE", "SITE"]), st.sampled_from(["a", "b"]), min_size=1),
    },
).filter(bool)
facts = st.builds(
    HostFacts,
    hostname=st.sampled_from(["pi-kitchen", "kitchen.lan", "attic", "PI-ATTIC", "vm"]),
    existing_files=st.frozensets(st.sampled_from(["/etc/reconciler/primary", "/srv/marker"])),
    env=st.dictionaries(st.sampled_from(["ROLE", "SITE"]), st.sampled_from(["a", "b", "secret-value"])),
)


@given(conditions, facts)
def test_every_condition_must_hold(written: dict[str, Any], host: HostFacts) -> None:
    hosts = HostsSpec.model_validate(written)
    holds = [
        hosts.hostname is None or hostname_matches(hosts.hostname, host.hostname),
        hosts.file_exists is None or hosts.file_exists in host.existing_files,
        all(host.env.get(k) == v for k, v in (hosts.env or {}).items()),
    ]
    failed = failed_conditions(hosts, host)
    assert (not failed) == all(holds)
    env_mismatches = [k for k, v in (hosts.env or {}).items() if host.env.get(k) != v]
    assert len(failed) == (not holds[0]) + (not holds[1]) + len(env_mismatches)  # every one is named
    text = "; ".join(failed)
    assert "secret-value" not in text  # the actual value of a variable is never printed
    if not holds[0]:
        assert repr(host.hostname) in text  # the reason names the actual hostname


@given(conditions, conditions, conditions, facts)
def test_the_verdict_for_the_stack_and_its_services(
    stack_cond: dict[str, Any], pg_cond: dict[str, Any], redis_cond: dict[str, Any], host: HostFacts
) -> None:
    base = spec_with()
    desired = base.model_copy(
        update={
            "hosts": HostsSpec.model_validate(stack_cond),
            "services": base.services.model_copy(
                update={
                    "postgres": base.services.postgres.model_copy(  # type: ignore[union-attr]
                        update={"hosts": HostsSpec.model_validate(pg_cond)}
                    ),
                    "redis": base.services.redis.model_copy(  # type: ignore[union-attr]
                        update={"hosts": HostsSpec.model_validate(redis_cond)}
                    ),
                }
            ),
        }
    ).with_base_dir("/srv")
    verdict = decide(desired, host)
    stack_ok = not failed_conditions(desired.hosts, host)
    runs = {
        n
        for n, c in (("postgres", pg_cond), ("redis", redis_cond))
        if not failed_conditions(HostsSpec.model_validate(c), host)
    }
    assert verdict.matches == (stack_ok and bool(runs))
    assert set(verdict.skipped) == {"postgres", "redis"} - runs
    here = for_this_host(desired, verdict)
    if verdict.matches:
        assert set(here.services.configured()) == runs
        assert here.base_dir == "/srv" and here.ram_root == desired.ram_root
    else:
        assert verdict.stack_reason and here is desired


# -- the planner: a host that is left out does nothing, whatever the world ------------------------


@given(worlds(), facts)
def test_a_stack_not_for_this_host_plans_nothing_whatever_runs(world: Any, host: HostFacts) -> None:
    desired, observed = world
    desired = desired.model_copy(
        update={"hosts": HostsSpec.model_validate({"hostname": ["nowhere-*"]})}
    ).with_base_dir(desired.base_dir)
    verdict = decide(desired, host)
    assert not verdict.matches
    result = plan_for_host(desired, observed, NOW, verdict)
    assert result.actions == () and result.blockers == () and result.in_sync
    assert result.not_for_host is not None and host.hostname in result.not_for_host
    assert any("left alone" in note for note in result.notes)
    assert result.summary() == "No changes: the stack is not for this host."


def test_a_service_not_for_this_host_is_neither_started_nor_stopped() -> None:
    desired = spec_with(redis_hosts="{hostname: [attic]}")
    verdict = decide(desired, HostFacts("pi-kitchen"))
    assert verdict.matches and set(verdict.skipped) == {"redis"}
    here = for_this_host(desired, verdict)
    world = fresh_world(desired)
    result = plan_for_host(here, world, NOW, verdict)
    touched = {a.service for a in result.actions if a.service}
    assert touched == {"postgres"}
    assert any("redis is not for this host" in n and "'pi-kitchen'" in n for n in result.notes)
    # a redis still running here (the host stopped matching it) is left alone: no action names it
    running = world.with_service(
        type(world.services["redis"])(name="redis", running=True, pid=42, port=6380, data_dir="/x")
    )
    assert all(a.service != "redis" for a in plan_for_host(here, running, NOW, verdict).actions)


def test_no_hosts_means_every_host() -> None:
    desired = spec_with()
    verdict = decide(desired, HostFacts("anything"))
    assert verdict.matches and not verdict.skipped and for_this_host(desired, verdict) is desired


# -- a stack split across hosts: which sets are this host's ---------------------------------------


@st.composite
def shared_store(draw: st.DrawFn) -> tuple[BackupSet, ...]:
    sets = []
    for sequence in range(1, draw(st.integers(0, 8)) + 1):
        name = f"demo-20261121T16{sequence:02d}00Z-{sequence:06d}-manual"
        members = draw(st.sets(st.sampled_from(["postgres", "redis"])))
        files = [StoredFile(f"{name}.{SUFFIX[m]}", 10) for m in sorted(members)]
        if draw(st.booleans()):
            files.append(StoredFile(f"{name}.manifest.json", 1))
        sets.append(BackupSet(name, "demo", NOW, "manual", "local", tuple(files)))
    return tuple(sets)


@given(shared_store(), st.sampled_from(["postgres", "redis"]))
def test_a_split_host_never_rotates_and_never_restores_from_another_hosts_sets(
    sets: tuple[BackupSet, ...], ours: str
) -> None:
    other = "redis" if ours == "postgres" else "postgres"
    mine, skipped = frozenset({ours}), frozenset({other})
    # another host's data only in a pre-split set this host owns (owns_pre_split, tested below)
    assert all(ours in set_services(s) for s in retained_here(sets, skipped) if other in set_services(s))
    assert [s for s in sets if set_services(s) == mine] == [
        s for s in retained_here(sets, skipped) if set_services(s) == mine
    ]
    restorable = restorable_here(sets, mine)
    # every set that could restore our service stays a candidate; only sets holding none of it go
    assert [s for s in sets if ours in set_services(s)] == [s for s in restorable if ours in set_services(s)]
    assert all(not s.complete or ours in set_services(s) or not set_services(s) for s in restorable)
    assert all(ours in set_services(s) for s in scheduled_here(sets, mine, skipped))
    # without a split nothing changes
    both = frozenset({"postgres", "redis"})
    assert retained_here(sets, frozenset()) == sets == restorable_here(sets, both)
    assert scheduled_here(sets, both, frozenset()) == sets


@given(shared_store(), st.sets(st.sampled_from(["postgres", "redis"]), min_size=1))
def test_restore_candidates_for_empty_services_are_the_sets_that_hold_one_of_them(
    sets: tuple[BackupSet, ...], empty: set[str]
) -> None:
    """Not only on a split host: a set holding only other services (taken before the empty service was
    added, or moved here) is never tried for it, so it is never recorded as rejected for its content."""
    restorable = restorable_here(sets, frozenset(empty))
    assert [s for s in sets if set_services(s) & empty or not set_services(s) or not s.complete] == list(
        restorable
    )


@given(
    st.dictionaries(st.sampled_from(["postgres", "redis", "mariadb"]), st.just("$X is not set")),
    st.one_of(st.none(), st.just("hostname 'b' matches none of a")),
    st.one_of(st.none(), st.sets(st.sampled_from(["postgres", "redis", "mariadb"])).map(frozenset)),
)
def test_an_unfinished_operation_keeps_its_services_and_the_stack_on_this_host(
    skipped: dict[str, str], reason: str | None, journaled: frozenset[str] | None
) -> None:
    verdict = HostVerdict("b", reason, skipped)
    kept = finishing_here(verdict, journaled)
    if journaled is None:
        assert kept == verdict
        return
    assert kept.matches and not set(kept.skipped) & journaled
    assert set(kept.skipped) == set(skipped) - journaled


@given(shared_store())
def test_a_pre_split_set_is_rotated_by_exactly_one_host_once_each_of_its_services_has_a_newer_set(
    sets: tuple[BackupSet, ...],
) -> None:
    """Two hosts (postgres on one, redis on the other) share a store. A set holding both (taken before
    the split) is counted by the postgres host alone (first service by name), and only when both
    services are in newer complete sets; otherwise by neither (it may be the redis host's only backup).
    Before the rule, neither host ever deleted it."""
    hosts = {"postgres": frozenset({"redis"}), "redis": frozenset({"postgres"})}  # host: its skipped
    retained = {host: retained_here(sets, skipped) for host, skipped in hosts.items()}
    for position, backup_set in enumerate(sets):
        if set_services(backup_set) != {"postgres", "redis"}:
            continue
        newer = [s for s in sets[position + 1 :] if s.complete]
        covered = any("redis" in set_services(s) for s in newer)
        assert (backup_set in retained["postgres"]) == covered
        assert backup_set not in retained["redis"]
        assert owns_pre_split(backup_set, sets, hosts["postgres"]) == covered
