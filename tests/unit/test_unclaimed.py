"""RAM data the reconciler did not create (no marker) is never "in sync" while backup sets exist.

``observe.docker.disown_unclaimed`` is a pure function of the observed state; with the planner's
generated worlds (tests/unit/test_planner.py) it is checked that a stack whose RAM data is unclaimed is
never reported in sync, so an empty database an image's entrypoint initialised after a reboot is
neither served as the stack's data nor backed up; and that without a complete set nothing changes.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.observe.docker import disown_unclaimed
from reconciler.plan.observed import ObservedState
from reconciler.plan.planner import plan
from reconciler.spec.model import StateSpec
from tests.unit.test_planner import NOW, worlds


def with_unclaimed(observed: ObservedState, names: set[str]) -> ObservedState:
    for name in names & set(observed.services):
        service = observed.services[name]
        if service.ram.initialized:
            observed = observed.with_service(replace(service, ram=replace(service.ram, unclaimed=True)))
    return observed


@settings(max_examples=300)
@given(worlds(), st.sets(st.sampled_from(["postgres", "redis"]), min_size=1))
def test_unclaimed_ram_data_is_never_in_sync_while_sets_exist(
    world: tuple[StateSpec, ObservedState], names: set[str]
) -> None:
    desired, observed = world
    observed = with_unclaimed(observed, names)
    unclaimed = [s for s in observed.services.values() if s.ram.unclaimed]
    result = disown_unclaimed(observed)
    if not any(s.complete for s in observed.backups.sets):
        assert result == observed  # the only data there is: kept as it is
        return
    assert not any(s.ram.unclaimed and s.ram.initialized for s in result.services.values())
    if desired.mode == "ram" and unclaimed:
        assert not plan(desired, result, NOW).in_sync
        assert not plan(desired, result, NOW, allow_empty=True).in_sync
