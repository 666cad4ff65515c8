"""Mode switch: write downtime and total time, disk→ram and ram→disk, vs the legacy way, in one run.

Write downtime = from the start of the drain step to the end of the resume step, read from the
operation's journal (each step records when it started and finished). The legacy way (what the old
Makefile did): a full plain dump, then psql into the freshly started servers on the other side; the
application is down for all of it.
Targets (issue 7): downtime under 2 s per GB of data directory, at least 5x shorter than legacy.

Usage: python bench/switch.py [--mb 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import bench_stack, cli, print_table, write_results
from dataset import generate
from ruamel.yaml import YAML

from reconciler.databases.postgres import RESTORE_ENV


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def switch(state: Path, mode: str) -> dict[str, Any]:
    document = YAML(typ="safe").load(state.read_text())
    document["mode"] = mode
    with state.open("w") as handle:
        YAML().dump(document, handle)
    start = time.perf_counter()
    cli(state, "apply")
    total = time.perf_counter() - start
    history = sorted((state.parent / ".reconciler" / "journal-history").iterdir())
    journal = json.loads(history[-1].read_text())
    steps = {s["name"]: round(_ts(s["finished"]) - _ts(s["started"]), 3) for s in journal["steps"]}
    by_name = {s["name"]: s for s in journal["steps"]}
    downtime = _ts(by_name["resume"]["finished"]) - _ts(by_name["drain"]["started"])
    return {"total_seconds": round(total, 2), "downtime_seconds": round(downtime, 2), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1000)
    megabytes = parser.parse_args().mb
    with bench_stack(mode="disk", encrypted=True) as state:
        document = YAML(typ="safe").load(state.read_text())
        port = document["services"]["postgres"]["port"]
        sock = str(state.parent / ".reconciler" / "run" / "postgres")
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
        info = generate(
            {"host": sock, "port": port, "user": "postgres", "dbname": "bench"}, bindir, megabytes
        )
        data_dir_gb = (
            sum(p.stat().st_size for p in (state.parent / "data" / "postgres").rglob("*") if p.is_file())
            / 1e9
        )

        to_ram = switch(state, "ram")
        to_disk = switch(state, "disk")

        # legacy: full plain dump, then restore with psql into a fresh database (the app is down throughout)
        pg = ["-h", sock, "-p", str(port), "-U", "postgres"]
        plain = state.parent / "legacy.sql"
        start = time.perf_counter()
        subprocess.run(
            [str(bindir / "pg_dump"), *pg, "-Fp", "--no-owner", "--no-acl", "-f", str(plain), "bench"],
            check=True,
        )
        subprocess.run(
            [str(bindir / "psql"), *pg, "-d", "postgres", "-Xqc", "CREATE DATABASE legacy_copy"], check=True
        )
        subprocess.run(
            [
                str(bindir / "psql"),
                *pg,
                "-d",
                "legacy_copy",
                "-Xq",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(plain),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **RESTORE_ENV},  # the same server settings as our own restore path
        )
        legacy = time.perf_counter() - start

    rows = [
        {
            "what": "disk → ram",
            **to_ram,
            "downtime_s_per_gb": round(to_ram["downtime_seconds"] / data_dir_gb, 2),
        },
        {
            "what": "ram → disk",
            **to_disk,
            "downtime_s_per_gb": round(to_disk["downtime_seconds"] / data_dir_gb, 2),
        },
        {
            "what": "legacy (dump + psql restore)",
            "total_seconds": round(legacy, 2),
            "downtime_seconds": round(legacy, 2),
            "downtime_s_per_gb": round(legacy / data_dir_gb, 2),
            "steps": {},
        },
    ]
    print_table(
        f"mode switch, data directory {data_dir_gb:.2f} GB",
        ["what", "downtime s", "s per GB", "total s", "x legacy downtime"],
        [
            [
                r["what"],
                f"{r['downtime_seconds']:.1f}",
                f"{r['downtime_s_per_gb']:.2f}",
                f"{r['total_seconds']:.1f}",
                f"{r['downtime_seconds'] / legacy:.2f}",
            ]
            for r in rows
        ],
    )
    for row in rows[:2]:
        print(row["what"], "steps (s):", json.dumps(row["steps"]))
    print(
        f"results: {write_results('switch', rows, scale_mb=megabytes, dataset=info, data_dir_gb=round(data_dir_gb, 3))}"
    )


if __name__ == "__main__":
    main()
