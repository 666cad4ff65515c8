"""Hostile-input review (issue 13 follow-up): state files that got past the first round of defences.

Each case is one attack that was accepted, or crashed the loader, before its fix: a ``\\U`` escape
beyond U+10FFFF (a ``ValueError`` out of ruamel's scanner, not ``SpecInvalid``), digits of other
scripts in quantities (Bengali ``৪`` is 4 and reads as 8), and ``//etc``, which ``posixpath.normpath``
keeps as is and so slipped past the system-directory check although Linux reads it as ``/etc``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import SpecInvalid
from reconciler.spec.loader import parse_state
from tests.unit.test_hostile_spec import BASE as HOSTILE_BASE

BASE = HOSTILE_BASE + "backup:\n  cadence: 1h\nram:\n  tmpfs_size: 25%\n"


def _problems(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(SpecInvalid) as caught:
        parse_state(text, base_dir="/srv/app")
    return [(p.line, p.column, p.path, p.message) for p in caught.value.problems]


@pytest.mark.parametrize("escape", ["\\U00110000", "\\UFFFFFFFF"])
def test_an_escape_beyond_unicode_is_refused_at_its_position(escape: str) -> None:
    text = BASE.replace("stack: demo", f'stack: "de{escape}mo"')
    assert _problems(text) == [
        (2, 11, "(syntax)", f"the escape {escape} names no Unicode character (at most \\U0010FFFF)")
    ]


@pytest.mark.parametrize(
    ("original", "forged"),
    [
        ("cadence: 1h", "cadence: ৪h"),  # Bengali four, looks like 8
        ("cadence: 1h", "cadence: １h"),  # fullwidth one
        ("cadence: 1h", "cadence: ١h"),  # Arabic-Indic one
        ("tmpfs_size: 25%", "tmpfs_size: ２５%"),
        ("tmpfs_size: 25%", "tmpfs_size: 8৪GiB"),
    ],
)
def test_quantities_take_ascii_digits_only(original: str, forged: str) -> None:
    problems = _problems(BASE.replace(original, forged))
    assert len(problems) == 1 and problems[0][2] in ("backup.cadence", "ram.tmpfs_size"), problems


@given(st.sampled_from(["//etc", "//usr/lib/x", "//proc/1", "//", "//dev/sda", "//./etc", "//srv/../etc"]))
def test_a_doubled_leading_slash_is_still_the_system_directory(path: str) -> None:
    problems = _problems(BASE.replace("disk_dir: ./data/redis", f"disk_dir: '{path}'"))
    assert any(
        where == "services.redis.disk_dir" and "is a system directory" in message
        for _, _, where, message in problems
    ), problems


def test_a_doubled_leading_slash_in_the_base_directory_is_one_slash() -> None:
    spec = parse_state(BASE, base_dir="//srv/app")
    assert spec.disk_dir("redis") == "/srv/app/data/redis"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("disk_dir", "./data/pg$(id)"),
        ("disk_dir", "./data/pg`id`"),
        ("disk_dir", './data/pg"x'),
        ("disk_dir", "./data/pg\\x"),
        ("disk_dir", "./data/pg\nx"),
        ("state_dir", "./state;id"),
        ("state_dir", "./state x"),
        ("state_dir", "./state,/tmp"),
        ("state_dir", "./state|id"),
    ],
)
def test_directories_that_reach_pg_ctl_refuse_what_a_shell_interprets(key: str, value: str) -> None:
    quoted = json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    if key == "disk_dir":
        document = BASE.replace("disk_dir: ./data/pg", f"disk_dir: {quoted}")
    else:
        document = BASE + f"state_dir: {quoted}\n"
    problems = _problems(document)
    wanted = "services.postgres.disk_dir" if key == "disk_dir" else "state_dir"
    assert any(where == wanted and "/bin/sh" in message for _, _, where, message in problems), problems


def test_plain_directory_names_with_spaces_and_unicode_stay_valid() -> None:
    spec = parse_state(
        BASE.replace("disk_dir: ./data/pg", "disk_dir: ./Daten für pg (alt)"), base_dir="/srv/app"
    )
    assert spec.disk_dir("postgres") == "/srv/app/Daten für pg (alt)"


@pytest.mark.parametrize(
    ("original", "forged", "where"),
    [
        ("user: app", "user: postgres", "services.postgres.user"),
        ("database: app", "database: postgres", "services.postgres.database"),
    ],
)
def test_the_application_cannot_be_given_the_superuser_or_the_maintenance_database(
    original: str, forged: str, where: str
) -> None:
    problems = _problems(BASE.replace(original, forged))
    assert [p[2] for p in problems] == [where] and "postgres is the" in problems[0][3], problems
