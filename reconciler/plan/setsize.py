"""Which ``backup.max_set_size`` applies to a set (pure).

Design decision: the size guard protects the store from a runaway table, at the price of refusing a
set. That price is wrong for exactly one set: the pre-switch set of a RAM-pressure fallback to disk
(``ram.on_pressure: fallback-to-disk``). That switch is the safety move that keeps the data when RAM
runs out, and it needs its set first (it is also what the switch falls back to); refusing it because
the database grew past the limit would block the rescue and leave the data in RAM under pressure. So
that one set is exempt, the exemption is said in an event, and every other set (scheduled, manual, a
deliberate switch's) stays limited: raising the limit is then the administrator's decision.
"""

from __future__ import annotations

PRE_SWITCH = "pre-switch"


def set_size_limit(limit: int | None, trigger: str, pressure_fallback: bool) -> tuple[int | None, str | None]:
    """The limit for a set taken by ``trigger`` and, when the limit is lifted, why (for the event)."""
    if limit is not None and trigger == PRE_SWITCH and pressure_fallback:
        return None, (
            f"the pre-switch backup of a RAM-pressure fallback to disk is exempt from backup.max_set_size "
            f"({limit} bytes): the switch that moves the data out of RAM must not be blocked by it"
        )
    return limit, None
