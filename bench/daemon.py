"""The daemon's cost at rest and its reaction time.

Measures, in one run, on a real stack (PostgreSQL + Redis in RAM mode, resync 1 minute):
- idle CPU: the daemon's own CPU time plus that of the commands it ran (psql, git), over an idle
  window, as a share of one core (target < 0.5%);
- RSS of the daemon after the window (target < 80 MB), and peak RSS;
- latency from saving state.yaml to the first action (the "Reconciling" event), median of N edits
  (target < 1 s);
- baselines in the same run: RSS of a bare interpreter, and the time of one `reconciler plan`
  process, which is the least a cron- or hook-driven reconcile pays before it can act.

Usage: python bench/daemon.py [--idle-seconds 60] [--edits 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import timed_run
from _stack import bench_stack, free_port, print_table, write_results
from ruamel.yaml import YAML

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and of its waited-for children (fields 14-17 of /proc/pid/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def memory(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def events(state: Path) -> list[dict[str, Any]]:
    path = state.parent / ".reconciler" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(state: Path, reason: str, after: int, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["reason"] == reason for e in events(state)[after:]):
            return time.monotonic()
        time.sleep(0.005)
    raise SystemExit(f"no {reason} event within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    yaml = YAML()
    with bench_stack(extra={"daemon": {"resync": "1m", "metrics_port": free_port()}}) as state:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "-f", str(state), "daemon"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        try:
            wait_for_event(state, "SetVerified", 0)  # the first pass is over: first backup taken and verified
            cpu_before, started = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            cpu_after, elapsed = cpu_seconds(daemon.pid), time.monotonic() - started
            idle_share = (cpu_after - cpu_before) / elapsed
            rss, peak = memory(daemon.pid)

            latencies = []
            for index in range(args.edits):
                document = yaml.load(state.read_text())
                document["services"]["postgres"]["database"] = f"bench_{index}"
                mark = len(events(state))
                with state.open("w") as handle:
                    yaml.dump(document, handle)
                saved = time.monotonic()
                latencies.append(wait_for_event(state, "Reconciling", mark) - saved)
                wait_for_event(state, "Converged", mark)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)

        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"], env=ENV)
        time.sleep(0.5)
        bare_rss, _ = memory(bare.pid)
        bare.kill()
        bare.wait()
        plan_times = []
        for _ in range(5):
            plan_times.append(timed_run([sys.executable, "-m", "reconciler", "-f", str(state), "plan"], ENV))

    latency = statistics.median(latencies)
    plan_time = statistics.median(plan_times)
    rows = [
        {"metric": "idle CPU (% of one core)", "value": round(idle_share * 100, 3), "target": "< 0.5"},
        {
            "metric": "RSS (MB)",
            "value": round(rss / 1e6, 1),
            "target": "< 80",
            "baseline_bare_python_mb": round(bare_rss / 1e6, 1),
        },
        {"metric": "peak RSS (MB)", "value": round(peak / 1e6, 1), "target": "-"},
        {
            "metric": "save → first action (s, median)",
            "value": round(latency, 3),
            "target": "< 1",
            "samples": [round(x, 3) for x in latencies],
            "baseline_plan_process_s": round(plan_time, 3),
        },
    ]
    print_table(
        f"daemon (resync 1 min, idle window {args.idle_seconds:.0f} s)",
        ["metric", "value", "target", "baseline", "ratio"],
        [
            [rows[0]["metric"], f"{rows[0]['value']:.3f}", "< 0.5", "-", "-"],
            [
                rows[1]["metric"],
                f"{rows[1]['value']:.1f}",
                "< 80",
                f"bare python {bare_rss / 1e6:.1f}",
                f"{rss / bare_rss:.1f}x",
            ],
            [rows[2]["metric"], f"{rows[2]['value']:.1f}", "-", "-", "-"],
            [
                rows[3]["metric"],
                f"{latency:.3f}",
                "< 1",
                f"one `plan` process {plan_time:.3f}",
                f"{latency / plan_time:.2f}x",
            ],
        ],
    )
    print(write_results("daemon", rows, idle_seconds=args.idle_seconds))


if __name__ == "__main__":
    main()
