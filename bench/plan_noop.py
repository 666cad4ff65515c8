"""How long a no-op `reconciler plan` takes on a running stack.

Measures, in one run:
- the whole process (`reconciler plan` exiting 0), median of N runs;
- the observe+plan part alone, in-process (median of N);
- the CLI's import time (`python -c "import reconciler.cli.main"` plus what `plan` imports);
- the baseline: a bare `python -c pass` with the same interpreter, the floor every CLI pays.
Targets (issue 2): whole process < 300 ms, observe+plan < 50 ms.

Usage: python bench/plan_noop.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    py = sys.executable

    with bench_stack() as state:
        # warm the page cache once
        subprocess.run([py, "-m", "reconciler", "-f", str(state), "plan"], capture_output=True, check=True)
        whole = timed([py, "-m", "reconciler", "-f", str(state), "plan"], runs)
        baseline = timed([py, "-c", "pass"], runs)
        imports = timed(
            [
                py,
                "-c",
                "import reconciler.cli.main, reconciler.engine.context, reconciler.spec.loader, rich.console",
            ],
            runs,
        )

        from reconciler.engine.context import StackContext
        from reconciler.plan.planner import plan
        from reconciler.spec.loader import parse_state

        spec = parse_state(state.read_text(), str(state), str(state.parent))
        ctx = StackContext.build(spec, str(state))
        inner = []
        for _ in range(runs):
            start = time.perf_counter()
            result = plan(spec, ctx.observe(), datetime.now(UTC))
            inner.append(time.perf_counter() - start)
            assert result.in_sync, result.summary()

    med = {
        k: statistics.median(v) * 1000
        for k, v in {"whole": whole, "baseline": baseline, "imports": imports, "inner": inner}.items()
    }
    rows = [
        {
            "what": "reconciler plan (whole process)",
            "median_ms": med["whole"],
            "target_ms": 300,
            "ratio_to_baseline": med["whole"] / med["baseline"],
        },
        {
            "what": "observe + plan (in-process)",
            "median_ms": med["inner"],
            "target_ms": 50,
            "ratio_to_baseline": med["inner"] / med["baseline"],
        },
        {
            "what": "CLI imports (python + modules)",
            "median_ms": med["imports"],
            "target_ms": None,
            "ratio_to_baseline": med["imports"] / med["baseline"],
        },
        {
            "what": "baseline: python -c pass",
            "median_ms": med["baseline"],
            "target_ms": None,
            "ratio_to_baseline": 1.0,
        },
    ]
    print_table(
        f"no-op plan on a running stack, median of {runs} runs",
        ["what", "median ms", "target ms", "x baseline"],
        [
            [r["what"], f"{r['median_ms']:.1f}", str(r["target_ms"] or "-"), f"{r['ratio_to_baseline']:.2f}"]
            for r in rows
        ],
    )
    print(f"results: {write_results('plan_noop', rows, runs=runs)}")


if __name__ == "__main__":
    main()
