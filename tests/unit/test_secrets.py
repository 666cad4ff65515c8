"""Pure parts of the hostile-files work: the legacy script cutter, SCRAM verifiers, loopback URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.backup.legacy import ScriptPart, script_parts
from reconciler.databases.postgres import scram_verifier, verifier_matches
from reconciler.errors import PermanentError
from reconciler.spec.model import is_loopback_url


def test_copy_data_may_hold_backslashes_and_plain_sql_is_kept_in_order() -> None:
    sql = b"\\restrict abc123\nSET x = 1;\nCOPY public.t (a, b) FROM stdin;\n\\N\t\\\\x\n2\tb\n\\.\nSELECT 2;\n\\unrestrict abc123\n"
    assert script_parts(sql, "f") == [
        ScriptPart(b"SET x = 1;"),
        ScriptPart(b"COPY public.t (a, b) FROM stdin;", b"\\N\t\\\\x\n2\tb\n"),
        ScriptPart(b"SELECT 2;\n"),
    ]


@pytest.mark.parametrize(
    "command", ["\\! id", "  \\o |sh", "\\copy t from program 'id'", "\\connect other", "\\i /etc/x"]
)
def test_a_psql_command_outside_copy_data_is_refused_with_its_line(command: str) -> None:
    with pytest.raises(PermanentError, match="on line 3"):
        script_parts(f"SELECT 1;\nSELECT 2;\n{command}\n".encode(), "f")


def test_a_copy_without_its_end_marker_is_a_truncated_file() -> None:
    with pytest.raises(PermanentError, match="truncated"):
        script_parts(b"COPY t (a) FROM stdin;\n1\n2\n", "f")


@given(st.text(min_size=0, max_size=40), st.text(min_size=1, max_size=40))
def test_a_verifier_matches_its_password_only(password: str, other: str) -> None:
    verifier = scram_verifier(password, salt=b"0123456789abcdef", iterations=16)
    assert verifier.startswith("SCRAM-SHA-256$16:")
    assert verifier_matches(verifier, password)
    if other != password:
        assert not verifier_matches(verifier, other)
    assert not verifier_matches(None, password) and not verifier_matches("md5abc", password)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8099/", True),
        ("http://127.9.9.9/", True),
        ("http://[::1]:80/", True),
        ("http://localhost:1/", True),
        ("https://www.googleapis.com/", False),
        ("http://127.0.0.1.attacker.example/", False),
        ("http://user:pw@127.0.0.1/", False),
        ("ftp://127.0.0.1/", False),
        ("http://10.0.0.1/", False),
        ("http://[::ffff:8.8.8.8]/", False),
        ("http://127.0.0.1:notaport/", False),
    ],
)
def test_only_loopback_urls_are_accepted(url: str, ok: bool) -> None:
    assert is_loopback_url(url) is ok


def test_a_stale_role_password_is_one_step_and_an_unset_variable_a_warning() -> None:
    from dataclasses import replace

    from reconciler.plan.actions import EnsureDatabase
    from reconciler.plan.planner import plan
    from tests.unit.test_planner import NOW, fresh_world, simulate_all, spec

    desired = spec()
    world = simulate_all(fresh_world(desired), plan(desired, fresh_world(desired), NOW).actions)
    pg = world.services["postgres"]
    stale = world.with_service(replace(pg, role_password="stale"))
    result = plan(desired, stale, NOW)
    assert result.actions == (EnsureDatabase("postgres", "app", "app", False, False, True, True),)
    assert result.actions[0].describe() == (
        "set the password of role app in postgres (it differs from the configured one)"
    )
    assert plan(desired, simulate_all(stale, result.actions), NOW).in_sync
    unset = plan(desired, world.with_service(replace(pg, role_password="unset:APP_PW")), NOW)
    assert unset.in_sync and any("APP_PW, which is not set" in w for w in unset.warnings)
