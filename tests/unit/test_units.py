from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.spec.units import (
    SizeOrShare,
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
    parse_size_or_share,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("90m", 5400), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), (45, 45)],
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["1 hour", "", "h", "-5m", True, 1.5, "5x"])
def test_bad_durations_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_round_trip(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1GB", 10**9),
        ("1.5KiB", 1536),
        (100, 100),
        ("7", 7),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["lots", "4 GiBs", "-1", True, "1XB"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(bad)


def test_size_or_share() -> None:
    assert parse_size_or_share("50%") == SizeOrShare(percent=50)
    assert parse_size_or_share("50%").resolve(1000) == 500
    assert parse_size_or_share("50%").mount_option() == "50%"
    assert parse_size_or_share("4GiB").resolve(1) == 4 * 1024**3
    with pytest.raises(ValueError, match="between"):
        parse_size_or_share("150%")


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(4 * 1024**3) == "4 GiB"
