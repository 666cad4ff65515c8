"""The wall clock, and the one test-only hook that moves it.

Design decision: code that names, orders or ages backup sets reads the time here, never through
``datetime.now`` directly, so an end-to-end test can run the real CLI with a clock that is *behind*
(a Raspberry Pi without a real-time clock after a power cut) or jumps, without root and without
faketime's LD_PRELOAD. ``RECONCILER_TEST_CLOCK_OFFSET`` (seconds, may be negative or fractional) is
added to the real time; it exists for tests only and is ignored when unset or empty. The pure layers
never read a clock at all: they take ``now`` as an argument.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

OFFSET_ENV = "RECONCILER_TEST_CLOCK_OFFSET"


def offset() -> timedelta:
    raw = os.environ.get(OFFSET_ENV, "").strip()
    if not raw:
        return timedelta(0)
    try:
        return timedelta(seconds=float(raw))
    except ValueError:
        raise ValueError(f"{OFFSET_ENV}={raw!r} is not a number of seconds") from None


def now() -> datetime:
    """The current UTC time (shifted by the test-only offset when it is set)."""
    return datetime.now(UTC) + offset()


def now_iso() -> str:
    return now().isoformat(timespec="seconds").replace("+00:00", "Z")
