"""Human-friendly quantities in state.yaml: durations (``90m``), byte sizes (``4GiB``) and
"size or share of RAM" (``50%``).

Why our own small parsers instead of pydantic's ByteSize/timedelta: users write these values in YAML
by hand, and the error a user sees must say which spellings are accepted. pydantic's ISO-8601 durations
(``PT1H``) are not what anyone types into a config file, and its ByteSize silently treats ``1GB`` and
``1GiB`` alike in some versions. Each type here keeps the text it was written as, so a plan or an
error can echo the user's own spelling back.

Every quantity is bounded (``MAX_DURATION``, ``MAX_BYTES``) and computed in exact integer arithmetic:
a value of 400 nines, or ``99999999999999999999d``, is refused with the accepted range instead of
overflowing a float or ``timedelta`` far from the line that caused it. Per-option limits (a minimum
cadence, a minimum tmpfs size) are attached to the option's type with ``duration_between`` /
``bytes_between``, so they show in the error and in the option's description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"^\s*(?:(\d+)\s*([smhdw])\s*)+$", re.ASCII)
_DURATION_PART_RE = re.compile(r"(\d+)\s*([smhdw])", re.ASCII)

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$", re.ASCII)
# re.ASCII (the patterns above): \d would also match other scripts' digits (Bengali "৪" is 4 and looks
# like 8), so what a reviewer reads would not be what runs.
_MAX_DIGITS = 24  # more digits than any in-range value needs; longer numbers are refused unparsed

MAX_DURATION = timedelta(days=3650)
"""No duration in state.yaml may exceed ten years (far below ``timedelta``'s and ``datetime``'s limits)."""
MAX_BYTES = 1024**5
"""No size in state.yaml may exceed 1 PiB (exact integers; no float overflow)."""


def parse_duration(value: object) -> timedelta:
    """``"90m"``, ``"1h30m"``, ``"2d"``, or a number of seconds; at most ``MAX_DURATION``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 90m, 1h or 2d")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = value
    elif isinstance(value, str) and _DURATION_RE.match(value):
        parts = _DURATION_PART_RE.findall(value)
        if any(len(n) > _MAX_DIGITS for n, _ in parts):
            raise ValueError(f"{_echo(value)} is too long: at most {format_duration(MAX_DURATION)}")
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError(
            f"{_echo(value)} is not a duration; write a number with a unit: s, m, h, d or w "
            "(e.g. 30s, 90m, 1h, 2d)"
        )
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{_echo(value)} is too long: at most {format_duration(MAX_DURATION)}")
    return timedelta(seconds=seconds)


def _echo(value: object) -> str:
    """A user's value, quoted and cut short: an error message must not become a wall of nines."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} characters)"


def format_duration(delta: timedelta) -> str:
    """Shortest exact spelling: 5400 s → ``1h30m``."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_bytes(value: object) -> int:
    """``"4GiB"`` → 4294967296; ``"500MB"`` → 500000000; a plain integer is bytes; at most ``MAX_BYTES``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 4GiB")
    size: int | None = None
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        size = value
    elif isinstance(value, str):
        match = _BYTES_RE.match(value)
        if match and match.group(2).lower() in _BYTE_UNITS:
            if len(match.group(1).split(".")[0]) > _MAX_DIGITS:
                raise ValueError(f"{_echo(value)} is too large: at most {format_bytes(MAX_BYTES)}")
            size = int(Decimal(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
    if size is None:
        raise ValueError(
            f"{_echo(value)} is not a size; write a number with a unit: B, KB, MB, GB, TB, KiB, MiB, GiB, "
            "TiB (e.g. 512MiB, 4GiB)"
        )
    if size > MAX_BYTES:
        raise ValueError(f"{_echo(value)} is too large: at most {format_bytes(MAX_BYTES)}")
    return size


def format_bytes(size: float) -> str:
    """Binary units, three significant digits: 1536 → ``1.50 KiB``."""
    if size < 1024:
        return f"{int(size)} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SizeOrShare:
    """A tmpfs size: absolute bytes, or a share of the host's RAM (what tmpfs itself accepts as ``50%``)."""

    bytes: int | None = None
    percent: float | None = None

    def resolve(self, mem_total: int) -> int:
        if self.bytes is not None:
            return self.bytes
        assert self.percent is not None
        return int(mem_total * self.percent / 100)

    def mount_option(self) -> str:
        """The value for tmpfs's ``size=`` option, which understands both spellings."""
        if self.bytes is not None:
            return str(self.bytes)
        return f"{self.percent:g}%"

    def __str__(self) -> str:
        return format_bytes(self.bytes) if self.bytes is not None else f"{self.percent:g}%"


def parse_size_or_share(value: object) -> SizeOrShare:
    if isinstance(value, SizeOrShare):
        return value
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match:
            percent = Decimal(match.group(1)[: _MAX_DIGITS * 2])
            if not 1 <= percent <= 100:
                raise ValueError(f"{_echo(value)}: a share of RAM must be between 1% and 100%")
            return SizeOrShare(percent=float(percent))
    try:
        return SizeOrShare(bytes=parse_bytes(value))
    except ValueError as exc:
        if "too large" in str(exc):
            raise
        raise ValueError(
            f"{_echo(value)} is neither a size (e.g. 4GiB) nor a share of RAM (e.g. 50%)"
        ) from None


def _between(low: Any, high: Any, show: Any) -> Any:
    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise ValueError(f"{show(value)} is out of range: between {show(low)} and {show(high)}")
        return value

    return AfterValidator(check)


def duration_between(low: timedelta, high: timedelta = MAX_DURATION) -> Any:
    """A pydantic validator keeping a ``Duration`` within ``[low, high]``."""
    return _between(low, high, format_duration)


def bytes_between(low: int, high: int = MAX_BYTES) -> Any:
    """A pydantic validator keeping a ``ByteSize`` within ``[low, high]``."""
    return _between(low, high, lambda n: format_bytes(n).replace(" ", ""))


def share_between(low: int, high: int) -> Any:
    """A pydantic validator keeping an absolute ``TmpfsSize`` within ``[low, high]`` (shares are 1-100%)."""

    def check(value: SizeOrShare) -> SizeOrShare:
        if value.bytes is not None and not low <= value.bytes <= high:
            show = [format_bytes(n).replace(" ", "") for n in (value.bytes, low, high)]
            raise ValueError(f"{show[0]} is out of range: between {show[1]} and {show[2]} (or 1% to 100%)")
        return value

    return AfterValidator(check)


def _serialize_duration(value: timedelta) -> str:
    return format_duration(value)


def _serialize_bytes(value: int) -> str:
    return str(value)


def _serialize_share(value: SizeOrShare) -> str:
    return value.mount_option() if value.percent is not None else str(value.bytes)


_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^(\d+[smhdw])+$"},
        {"type": "integer", "minimum": 0},
    ],
    "description": "A duration: a number with a unit s, m, h, d or w (e.g. 90m, 1h30m), or seconds.",
}
_BYTES_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B?|B)?$"},
        {"type": "integer", "minimum": 0},
    ],
    "description": "A size: a number with a unit B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. 512MiB), or bytes.",
}
_SHARE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^\d+(\.\d+)?\s*%$"},
        {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B?|B)?$"},
        {"type": "integer", "minimum": 0},
    ],
    "description": "A size (e.g. 4GiB) or a share of the host's RAM (e.g. 50%).",
}

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_serialize_duration, return_type=str),
    WithJsonSchema(_DURATION_SCHEMA),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_bytes),
    PlainSerializer(_serialize_bytes, return_type=str),
    WithJsonSchema(_BYTES_SCHEMA),
]
TmpfsSize = Annotated[
    SizeOrShare,
    BeforeValidator(parse_size_or_share),
    PlainSerializer(_serialize_share, return_type=str),
    WithJsonSchema(_SHARE_SCHEMA),
]
