"""Human-friendly quantities in state.yaml: durations (``90m``), byte sizes (``4GiB``) and
"size or share of RAM" (``50%``).

Why our own small parsers instead of pydantic's ByteSize/timedelta: users write these values in YAML
by hand, and the error a user sees must say which spellings are accepted. pydantic's ISO-8601 durations
(``PT1H``) are not what anyone types into a config file, and its ByteSize silently treats ``1GB`` and
``1GiB`` alike in some versions. Each type here keeps the text it was written as, so a plan or an
error can echo the user's own spelling back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"^\s*(?:(\d+)\s*([smhdw])\s*)+$")
_DURATION_PART_RE = re.compile(r"(\d+)\s*([smhdw])")

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
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_duration(value: object) -> timedelta:
    """``"90m"``, ``"1h30m"``, ``"2d"``, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 90m, 1h or 2d")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str) or not _DURATION_RE.match(value):
        raise ValueError(
            f"{value!r} is not a duration; write a number with a unit: s, m, h, d or w (e.g. 30s, 90m, 1h, 2d)"
        )
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(value))
    return timedelta(seconds=seconds)


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
    """``"4GiB"`` → 4294967296; ``"500MB"`` → 500000000; a plain integer is bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 4GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _BYTES_RE.match(value)
        if match and match.group(2).lower() in _BYTE_UNITS:
            return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
    raise ValueError(
        f"{value!r} is not a size; write a number with a unit: B, KB, MB, GB, KiB, MiB, GiB (e.g. 512MiB, 4GiB)"
    )


def format_bytes(size: float) -> str:
    """Binary units, three significant digits: 1536 → ``1.50 KiB``."""
    if size < 1024:
        return f"{int(size)} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
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
            percent = float(match.group(1))
            if not 0 < percent <= 100:
                raise ValueError(f"{value!r}: a share of RAM must be between 0% and 100%")
            return SizeOrShare(percent=percent)
    try:
        return SizeOrShare(bytes=parse_bytes(value))
    except ValueError:
        raise ValueError(f"{value!r} is neither a size (e.g. 4GiB) nor a share of RAM (e.g. 50%)") from None


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
    "description": "A size: a number with a unit B, KB, MB, GB, KiB, MiB, GiB (e.g. 512MiB), or bytes.",
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
