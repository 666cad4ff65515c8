"""`status` says why the stack is out of sync when the cause is drift apply cannot heal (issue 14)."""

from __future__ import annotations

from tests.conftest import Stack


def test_status_names_the_headroom_problem_that_keeps_the_stack_out_of_sync(stack: Stack) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    document = stack.document()
    document["ram"]["min_headroom"] = "16TiB"  # more than any host here has: low headroom, on_pressure warn
    stack.write(document)
    assert "apply cannot heal" in stack.cli("plan", check=1).stdout
    status = stack.status()
    assert not status["in_sync"] and status["pending"] == [] and status["blockers"] == []
    (problem,) = [p for p in status["unhealable"] if "host memory available" in p]
    assert "below ram.min_headroom 16 TiB" in problem
