"""WAL on Google Drive, the pure parts: the spec refuses placement offsite without a Drive store,
and Drive retention's per-cluster rule never deletes what a kept base can replay."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan import walchain
from reconciler.spec.loader import parse_state
from tests.unit.test_loader import MINIMAL, problems

OFFSITE = MINIMAL + "backup:\n  continuous:\n    enabled: true\n    placement: offsite\n"
DRIVE = (
    "  stores:\n    gdrive:\n      enabled: true\n      folder_id: f1\n      credentials_file: /etc/g.json\n"
)


def test_offsite_placement_needs_a_drive_store_and_says_so() -> None:
    found = problems(OFFSITE)
    assert len(found) == 1 and "placement offsite" in found[0] and "backup.stores.gdrive" in found[0]
    assert "placement spool" in found[0]
    spec = parse_state(OFFSITE + DRIVE, "state.yaml")  # what the message asks for
    assert spec.backup.continuous.placement == "offsite"


names = st.integers(min_value=0, max_value=400)


@given(
    segments=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sets(names, max_size=30), max_size=3),
    bases=st.dictionaries(st.sampled_from(["a", "b"]), st.sets(names, min_size=1, max_size=3), max_size=2),
)
def test_drive_retention_keeps_every_segment_a_kept_base_can_replay(
    segments: dict[str, set[int]], bases: dict[str, set[int]]
) -> None:
    starts = {c: [walchain.segment_name(1, n) for n in b] for c, b in bases.items()}
    for cluster, numbers in segments.items():
        listing = [walchain.segment_name(1, n) for n in numbers]
        deleted = set(walchain.unneeded_in_cluster(listing, starts, cluster))
        assert deleted <= set(listing)
        if not starts:
            assert deleted == set()  # no kept base anywhere: nothing goes
        elif cluster in starts:
            oldest = min(bases[cluster])
            assert deleted == {walchain.segment_name(1, n) for n in numbers if n < oldest}
        else:
            assert deleted == set(listing)  # a history no kept base belongs to
