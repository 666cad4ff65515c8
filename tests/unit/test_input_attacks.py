"""Hostile-input review (issue 13 follow-up): state files that got past the first round of defences.

Each case is one attack that was accepted, or crashed the loader, before its fix: a ``\\U`` escape
beyond U+10FFFF (a ``ValueError`` out of ruamel's scanner, not ``SpecInvalid``), digits of other
scripts in quantities (Bengali ``৪`` is 4 and reads as 8), and ``//etc``, which ``posixpath.normpath``
keeps as is and so slipped past the system-directory check although Linux reads it as ``/etc``.
"""

from __future__ import annotations

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
