"""Run a command and measure its wall time and peak RSS: its own, and its whole process tree's.

RSS is sampled from /proc every 10 ms (children included), because getrusage only reports the largest
single child, not what a pipeline holds at once.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Measurement:
    seconds: float
    peak_tree_rss: int
    peak_own_rss: int
    returncode: int

    def row(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "peak_tree_rss_mb": round(self.peak_tree_rss / 1024**2, 1),
            "peak_own_rss_mb": round(self.peak_own_rss / 1024**2, 1),
        }


def timed_run(argv: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> float:
    """Wall seconds of one run of ``argv``. A run that exits with a code outside ``ok`` is an error, never
    a sample: a command that fails early is fast, and would make the figure look better than it is."""
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if result.returncode not in ok:
        raise RuntimeError(
            f"{' '.join(argv[:4])} exited {result.returncode} (expected {ok}): {result.stderr.decode()[-800:]}"
        )
    return seconds


def measure(argv: list[str], env: dict[str, str] | None = None, stdin: Any = None) -> Measurement:
    peak_tree = peak_own = 0
    done = threading.Event()
    start = time.perf_counter()
    process = subprocess.Popen(
        argv,
        env={**os.environ, **(env or {})},
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def sample() -> None:
        nonlocal peak_tree, peak_own
        while not done.is_set():
            tree = _children()
            pids, stack = [], [process.pid]
            while stack:
                pid = stack.pop()
                pids.append(pid)
                stack.extend(tree.get(pid, []))
            peak_tree = max(peak_tree, sum(_rss(p) for p in pids))
            peak_own = max(peak_own, _rss(process.pid))
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({process.returncode}): {stderr.decode()[-800:]}")
    return Measurement(seconds, peak_tree, peak_own, process.returncode)


def commit_posts(db: Any, tps: int, seconds: float) -> tuple[int, float]:
    """Commit ``tps`` small community posts per second (autocommit) for ``seconds``: (count, elapsed)."""
    started = time.monotonic()
    done = 0
    while time.monotonic() - started < seconds:
        db.execute("INSERT INTO posts (body, at) VALUES (repeat('a community post ', 20), now())")
        done += 1
        time.sleep(max(0.0, started + done / tps - time.monotonic()))
    return done, time.monotonic() - started


class Recorder:
    """Collects one result row per measured command (with the fields every row of a scale shares) and
    prints a progress line for each."""

    def __init__(self, **fixed: Any) -> None:
        self.fixed = fixed
        self.rows: list[dict[str, Any]] = []

    def __call__(self, what: str, kind: str, m: Measurement, output_bytes: int | None = None) -> None:
        self.rows.append({**self.fixed, "what": what, "kind": kind, **m.row(), "output_bytes": output_bytes})
        print(
            f"  {kind:8} {what:42} {m.seconds:7.1f} s  own {m.peak_own_rss / 2**20:7.1f} MB  "
            f"tree {m.peak_tree_rss / 2**20:7.1f} MB",
            flush=True,
        )


COMPARISON_COLUMNS = ["scale", "kind", "what", "seconds", "x base", "own RSS MB", "tree RSS MB", "output MB"]


def comparison_table(
    rows: list[dict[str, Any]], scale_key: str, is_baseline: Callable[[dict[str, Any]], bool]
) -> list[list[str]]:
    """Table rows (``COMPARISON_COLUMNS``): each row's seconds as a ratio to the baseline row of the same
    scale and kind, measured in the same run."""
    table = []
    for row in rows:
        base = next(
            r for r in rows if r[scale_key] == row[scale_key] and r["kind"] == row["kind"] and is_baseline(r)
        )
        table.append(
            [
                f"{row[scale_key]} MB",
                row["kind"],
                row["what"],
                f"{row['seconds']:.1f}",
                f"{row['seconds'] / base['seconds']:.2f}",
                f"{row['peak_own_rss_mb']:.0f}",
                f"{row['peak_tree_rss_mb']:.0f}",
                "-" if row["output_bytes"] is None else f"{row['output_bytes'] / 2**20:.0f}",
            ]
        )
    return table
