"""``apply``: observe → plan → execute → observe again, under the stack's lock.

Design decisions:
- The plan that is executed is computed under the lock from a fresh observation, never reused from
  an earlier ``plan`` run: the world may have changed in between (level-triggered, like a controller).
- After executing, the engine observes again and plans again. Success means that second plan is
  empty; anything else is reported as "did not converge" with what remains, so a step that silently
  failed to take effect cannot be mistaken for success.
- Retention that the apply's own actions made due belongs to the same apply: a switch or a restore
  takes new backup sets, which can make older ones fall out of retention. The second plan then holds
  only ``PruneBackups``; those are carried out too (one more round, never more), so a successful
  switch does not end in "did not converge" and the daemon does not show Stalled for nothing.
- Progress goes to the caller through a callback (the CLI renders it with rich on a terminal); the
  engine never prints.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.engine import status
from reconciler.engine.context import StackContext, read_state_bytes, remember_valid_spec
from reconciler.engine.revision import state_revision
from reconciler.engine.steps import execute
from reconciler.errors import InvalidInput, PermanentError, PlanBlocked, ReconcilerError
from reconciler.plan.actions import Action, PruneBackups, ResumeOperation
from reconciler.plan.failures import failure_code
from reconciler.plan.observed import ObservedState
from reconciler.plan.planner import Plan, not_for_host, plan_down, plan_for_host
from reconciler.system import clock, fs

log = logging.getLogger(__name__)

Progress = Callable[[int, int, Action], None]


@dataclass
class ApplyResult:
    plan: Plan
    executed: list[Action] = field(default_factory=list)
    seconds: float = 0.0


def compute_plan(ctx: StackContext, allow_empty: bool = False, upkeep: bool = True) -> Plan:
    """The plan for this host at the engine's clock (``system/clock.py``: the one the sets are named
    and aged by); on a host ``hosts:`` leaves out, decided without observing anything. ``upkeep``: see
    ``planner.plan``."""
    if not ctx.for_this_host:
        assert ctx.host is not None
        return not_for_host(ctx.host)
    return plan_for_host(ctx.spec, ctx.observe(), clock.now(), ctx.host, allow_empty, upkeep)


def plan_observed(ctx: StackContext, observed: ObservedState, upkeep: bool = True) -> Plan:
    """The plan for an observation already made (``status``, the daemon), behind the host conditions."""
    return plan_for_host(ctx.spec, observed, clock.now(), ctx.host, upkeep=upkeep)


def _run_actions(ctx: StackContext, the_plan: Plan, progress: Progress | None) -> list[Action]:
    done: list[Action] = []
    total = len(the_plan.actions)
    for index, action in enumerate(the_plan.actions, start=1):
        if progress:
            progress(index, total, action)
        log.info("step %d/%d: %s", index, total, action.describe())
        execute(action, ctx)
        done.append(action)
    return done


def apply(
    ctx: StackContext, progress: Progress | None = None, allow_empty: bool = False, upkeep: bool = True
) -> ApplyResult:
    if not ctx.for_this_host:  # not even the lock or the status file: this host leaves the stack alone
        return ApplyResult(compute_plan(ctx))
    started = time.monotonic()
    started_at = status.now_iso()
    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        the_plan = compute_plan(ctx, allow_empty, upkeep)
        result = ApplyResult(the_plan)
        try:
            if the_plan.actions and isinstance(the_plan.actions[0], ResumeOperation):
                # An interrupted operation reaches its safe point first; only then is state.yaml obeyed.
                result.executed = _run_actions(ctx, the_plan, progress)
                the_plan = compute_plan(ctx, allow_empty, upkeep)
                result.plan = the_plan
            if the_plan.blockers:
                raise PlanBlocked(list(the_plan.blockers))
            result.executed += _run_actions(ctx, the_plan, progress)
            after = compute_plan(ctx, allow_empty, upkeep)
            if result.executed and _only_retention(after):
                result.executed += _run_actions(ctx, after, progress)
                after = compute_plan(ctx, allow_empty, upkeep)
            if after.unhealable and not after.actions and not after.blockers:
                done = f"applied {len(result.executed)} step(s), but " if result.executed else ""
                raise PermanentError(
                    f"{done}the stack breaks a promise of state.yaml that apply cannot "
                    f"heal: {'; '.join(after.unhealable)}"
                )
            if not after.in_sync:
                remaining = "; ".join(a.describe() for a in after.actions) or "; ".join(after.blockers)
                raise PermanentError(f"apply did not converge; still to do: {remaining}")
        except ReconcilerError as exc:
            result.seconds = time.monotonic() - started
            _record(ctx, started_at, result, error=exc)
            raise
        result.seconds = time.monotonic() - started
        _record(ctx, started_at, result, error=None)
        return result


def _only_retention(the_plan: Plan) -> bool:
    """True when all that is left is retention (made due by the sets this apply just took)."""
    return (
        bool(the_plan.actions)
        and not the_plan.blockers
        and all(isinstance(a, PruneBackups) for a in the_plan.actions)
    )


def down(ctx: StackContext, progress: Progress | None = None) -> ApplyResult:
    """Stop every running service of the stack, those ``hosts:`` leaves out of this host included: a
    host that stops matching leaves its services running, and `down` is how a human stops them."""
    if ctx.full_spec is not None and ctx.full_spec is not ctx.spec:
        ctx = StackContext.build(ctx.full_spec, ctx.state_file, apply_hosts=False)
    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        started = time.monotonic()
        the_plan = plan_down(ctx.spec, ctx.observe())
        result = ApplyResult(the_plan, _run_actions(ctx, the_plan, progress))
        result.seconds = time.monotonic() - started
        status.record_run(
            ctx.status_path,
            {
                "kind": "down",
                "finished": status.now_iso(),
                "actions": [a.describe() for a in result.executed],
            },
            {"Ready": (False, "Stopped", "the stack was taken down with `reconciler down`")},
        )
        return result


def _record(ctx: StackContext, started_at: str, result: ApplyResult, error: ReconcilerError | None) -> None:
    run = {
        "kind": "apply",
        "started": started_at,
        "finished": status.now_iso(),
        "seconds": round(result.seconds, 3),
        "actions": [a.describe() for a in result.executed],
        "result": "error" if error else "success",
        "error": str(error) if error else None,
        "code": failure_code(error).value if error else None,
    }
    conditions: status.Conditions
    if error is None:
        if ctx.revision is None:  # the daemon remembers what it adopts itself (the commit's bytes)
            with contextlib.suppress(InvalidInput, OSError):
                remember_valid_spec(ctx.state_dir, read_state_bytes(ctx.state_file))
        conditions = {
            "Ready": (True, "InSync", f"stack in {ctx.spec.mode} mode with every service running"),
            "Stalled": (False, "Converged", "the last apply converged"),
        }
    else:
        reason = "PlanBlocked" if isinstance(error, PlanBlocked) else "ApplyFailed"
        code = failure_code(error).value
        conditions = {
            "Ready": (False, reason, str(error), code),
            "Stalled": (True, reason, str(error), code),
        }
    fields: dict[str, str | None] = {
        "stack": ctx.spec.stack,
        "mode": ctx.spec.mode,
        "runtime": ctx.spec.runtime,
    }
    if error is None:
        fields["lastAppliedRevision"] = ctx.revision or state_revision(ctx.state_file)
    status.record_run(ctx.status_path, run, conditions, **fields)
