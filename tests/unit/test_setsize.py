"""plan/setsize: only the pre-switch set of a RAM-pressure fallback escapes backup.max_set_size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan.setsize import PRE_SWITCH, set_size_limit

triggers = st.sampled_from(
    [PRE_SWITCH, "post-switch", "manual", "scheduled", "first", "post-restore", "shutdown"]
)
limits = st.none() | st.integers(min_value=64 * 1024, max_value=2**50)


@given(limits, triggers, st.booleans())
def test_the_limit_is_lifted_only_for_a_fallbacks_pre_switch_set_and_then_said(
    limit: int | None, trigger: str, fallback: bool
) -> None:
    applied, reason = set_size_limit(limit, trigger, fallback)
    exempt = limit is not None and trigger == PRE_SWITCH and fallback
    assert applied == (None if exempt else limit)
    assert (reason is not None) == exempt
    if reason is not None:
        assert "max_set_size" in reason and str(limit) in reason
