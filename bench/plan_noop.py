"""How long a no-op `reconciler plan` takes on a running stack.

Measures, in one run:
- the whole process (`reconciler plan` exiting 0), median of N runs, on the local runtime and on the
  docker runtime (both stacks up at once, runs interleaved so both see the same machine);
- the observe+plan part alone, in-process (median of N), and the Engine API requests per observation;
- the CLI's import time (`python -c "import reconciler.cli.main"` plus what `plan` imports);
- the baseline: a bare `python -c pass` with the same interpreter, the floor every CLI pays.
Targets (issues 2 and 14): whole process < 300 ms on both runtimes, observe+plan < 50 ms (local).

Usage: python bench/plan_noop.py [--runs N] [--runtime local|docker ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import timed_run
from _stack import bench_stack, print_table, write_results

# What a user's machine does: cache bytecode. (Some sandboxes set PYTHONDONTWRITEBYTECODE, which makes
# every run recompile the reconciler's own modules from source.)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], runs: int) -> list[float]:
    timed_run(argv, ENV)  # warm: page cache and bytecode
    return [timed_run(argv, ENV) for _ in range(runs)]


def interleaved(
    commands: dict[str, list[str]], runs: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each command once per round, ``runs`` rounds: a load spike on this shared machine then hits every
    runtime alike instead of whichever happened to be measured at that moment.

    Returns wall seconds and CPU seconds (user + system of the command's process tree, from
    ``RUSAGE_CHILDREN``): on a machine shared with other work, CPU time moves much less than wall time.
    It does not count the time other processes spend answering (the engine, PostgreSQL)."""
    for argv in commands.values():
        timed_run(argv, ENV)  # warm: page cache and bytecode
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall[name].append(timed_run(argv, ENV))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall, cpu


def inner_samples(state: Path, runs: int) -> tuple[list[float], int]:
    """observe + plan in-process, and how many Engine API requests one observation makes (docker)."""
    from reconciler.engine.context import StackContext
    from reconciler.plan.planner import plan
    from reconciler.spec.loader import parse_state

    spec = parse_state(state.read_text(), str(state), str(state.parent))
    ctx = StackContext.build(spec, str(state))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = plan(spec, ctx.observe(), datetime.now(UTC))
        samples.append(time.perf_counter() - start)
        assert result.in_sync, result.summary()
    reader = getattr(ctx.runtime, "_reader", None)
    requests = reader.requests // runs if reader is not None else 0
    return samples, requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--runtime", action="append", choices=["local", "docker"], help="default: both")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="a checkout of the old code (e.g. `git worktree add --detach DIR main`): its `plan` runs on the "
        "same stacks, interleaved with ours, so before and after are measured in one run. Run the benchmark "
        "from a directory holding no `reconciler` package (e.g. /tmp): `python -m` looks in the current "
        "directory before PYTHONPATH",
    )
    args = parser.parse_args()
    runs, runtimes = args.runs, args.runtime or ["local", "docker"]
    py = sys.executable

    with contextlib.ExitStack() as stacks:
        states = {runtime: stacks.enter_context(bench_stack(runtime=runtime)) for runtime in runtimes}
        if "docker" in states:
            stacks.callback(remove_containers, states["docker"])
        samples, cpu_samples = interleaved(
            {
                **{
                    runtime: [py, "-m", "reconciler", "-f", str(state), "plan"]
                    for runtime, state in states.items()
                },
                **{
                    f"before-{runtime}": [
                        "env",
                        f"PYTHONPATH={args.before}",
                        py,
                        "-m",
                        "reconciler",
                        "-f",
                        str(state),
                        "plan",
                    ]
                    for runtime, state in states.items()
                    if args.before
                },
                "baseline": [py, "-c", "pass"],
                "imports": [
                    py,
                    "-c",
                    "import reconciler.cli.main, reconciler.engine.context, reconciler.spec.loader, rich.console",
                ],
            },
            runs,
        )
        inner = {runtime: inner_samples(state, runs) for runtime, state in states.items()}

    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    cpu = {k: statistics.median(v) * 1000 for k, v in cpu_samples.items()}
    rows = []
    for runtime in runtimes:
        if args.before:
            rows.append(
                {
                    "what": f"before ({args.before}): reconciler plan, {runtime} runtime",
                    "median_ms": med[f"before-{runtime}"],
                    "cpu_ms": cpu[f"before-{runtime}"],
                    "target_ms": 300,
                    "ratio_to_baseline": med[f"before-{runtime}"] / med["baseline"],
                }
            )
        rows.append(
            {
                "what": f"reconciler plan (whole process), {runtime} runtime",
                "median_ms": med[runtime],
                "cpu_ms": cpu[runtime],
                "target_ms": 300,
                "ratio_to_baseline": med[runtime] / med["baseline"],
            }
        )
        inner_ms = statistics.median(inner[runtime][0]) * 1000
        rows.append(
            {
                "what": f"observe + plan (in-process), {runtime} runtime"
                + (f", {inner[runtime][1]} Engine API requests" if runtime == "docker" else ""),
                "median_ms": inner_ms,
                "target_ms": 50 if runtime == "local" else 100,
                "ratio_to_baseline": inner_ms / med["baseline"],
            }
        )
    rows += [
        {
            "what": "CLI imports (python + modules)",
            "median_ms": med["imports"],
            "cpu_ms": cpu["imports"],
            "target_ms": None,
            "ratio_to_baseline": med["imports"] / med["baseline"],
        },
        {
            "what": "baseline: python -c pass",
            "median_ms": med["baseline"],
            "cpu_ms": cpu["baseline"],
            "target_ms": None,
            "ratio_to_baseline": 1.0,
        },
    ]
    print_table(
        f"no-op plan on a running stack, median of {runs} interleaved runs",
        ["what", "median ms", "cpu ms", "target ms", "x baseline"],
        [
            [
                str(r["what"]),
                f"{r['median_ms']:.1f}",
                f"{r['cpu_ms']:.1f}" if "cpu_ms" in r else "-",
                str(r["target_ms"] or "-"),
                f"{r['ratio_to_baseline']:.2f}",
            ]
            for r in rows
        ],
    )
    print(f"results: {write_results('plan_noop', rows, runs=runs)}")


def remove_containers(state: Path) -> None:
    from ruamel.yaml import YAML

    stack = YAML(typ="safe").load(state.read_text())["stack"]
    for service in ("postgres", "redis"):
        subprocess.run(["docker", "rm", "-f", f"{stack}-{service}"], capture_output=True, check=False)


if __name__ == "__main__":
    main()
