"""The switch journal on a real filesystem: what must change together is written together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.engine.journal import Journal

pytestmark = pytest.mark.integration

STEPS = ["drain", "fingerprint", "stop", "copy", "start", "verify", "retire", "resume"]


def on_disk(state_dir: Path) -> dict:  # type: ignore[type-arg]
    return dict(json.loads((state_dir / "journal.json").read_text()))


def test_the_point_of_no_return_is_written_with_the_verify_step(tmp_path: Path) -> None:
    """Issue 12, item 9: a crash between two writes rolled back after the old copy was gone."""
    journal = Journal.create(str(tmp_path), "mode switch", "disk", "ram", "h", STEPS, {})
    for name in STEPS[:5]:
        journal.done(name, {})
    journal.done("verify", {"matched": []}, past_point_of_no_return=True)  # one call, one atomic write
    document = on_disk(tmp_path)
    assert document["past_point_of_no_return"] is True
    assert next(s for s in document["steps"] if s["name"] == "verify")["status"] == "done"


def test_redo_reopens_steps_and_clears_the_point_of_no_return_in_one_write(tmp_path: Path) -> None:
    journal = Journal.create(str(tmp_path), "mode switch", "disk", "ram", "h", STEPS, {})
    for name in STEPS[:6]:
        journal.done(name, {"n": name}, **({"past_point_of_no_return": True} if name == "verify" else {}))
    journal.redo(["copy", "start", "verify"], past_point_of_no_return=False)
    document = on_disk(tmp_path)
    assert document["past_point_of_no_return"] is False
    status = {s["name"]: (s["status"], s["evidence"]) for s in document["steps"]}
    assert status["copy"] == status["start"] == status["verify"] == ("pending", None)
    assert status["fingerprint"] == ("done", {"n": "fingerprint"}), (
        "the fingerprint is kept: it is the reference"
    )
    assert Journal.load(str(tmp_path)).pending()[:3] == ["copy", "start", "verify"]  # type: ignore[union-attr]
