"""The daemon's cost at rest and its reaction time.

Measures, in one run, on a real stack (PostgreSQL + Redis in RAM mode, resync 1 minute):
- idle CPU: the daemon's own CPU time plus that of the commands it ran (psql, git), over an idle
  window, as a share of one core (target < 0.5%);
- RSS of the daemon after the window (target < 80 MB), and peak RSS;
- latency from saving state.yaml to the first action (the "Reconciling" event), median of N edits
  (target < 1 s);
- healing: from a SIGKILL of PostgreSQL (then of Redis) while the daemon is idle to the service
  answering a query again, median of N kills each (target < 5 s; the resync is 1 minute, so a daemon
  that waited for it would show ~30 s on average);
- baselines in the same run: RSS of a bare interpreter, and the time of one `reconciler plan`
  process, which is the least a cron- or hook-driven reconcile pays before it can act.

Usage: python bench/daemon.py [--idle-seconds 60] [--edits 5] [--kills 10] [--docker-kills 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
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


def status(state: Path) -> dict[str, Any]:
    try:
        document = json.loads((state.parent / ".reconciler" / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return dict(document)


def serving(state: Path, service: str, port: int) -> bool:
    """One real query: SELECT 1 over PostgreSQL's socket, PING to Redis."""
    if service == "redis":
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
    import psycopg

    run = state.parent / ".reconciler" / "run" / "postgres"
    try:
        with psycopg.connect(
            host=str(run), port=port, user="postgres", dbname="postgres", connect_timeout=1
        ) as c:
            return c.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def pid_of(state: Path, service: str) -> int:
    observed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "reconciler", "-f", str(state), "status", "-o", "json"],
            capture_output=True,
            text=True,
            env=ENV,
            check=True,
        ).stdout
    )
    return int(observed["services"][service]["pid"])


def heal_time(state: Path, service: str, port: int, engine: Any = None, remove: bool = False) -> float:
    """SIGKILL the service (docker: kill or remove its container) while the daemon is idle; seconds
    until it answers a query again."""
    passes = status(state).get("daemon", {}).get("passes", 0)
    if engine is None:
        os.kill(pid_of(state, service), signal.SIGKILL)
    else:
        container = engine.containers.get(f"{yaml_load(state)['stack']}-{service}")
        container.remove(force=True) if remove else container.kill()
    killed = time.monotonic()
    deadline = killed + 120
    while not serving(state, service, port):
        if time.monotonic() > deadline:
            recent = [f"{e['reason']}: {e['message'][:200]}" for e in events(state)[-6:]]
            raise SystemExit(f"{service} was not serving again within 120 s; last events: {recent}")
        time.sleep(0.01)
    healed = time.monotonic() - killed
    while status(state).get("daemon", {}).get("passes", 0) <= passes:  # the healing pass is over
        if time.monotonic() > deadline:
            raise SystemExit("the daemon's healing pass did not end")
        time.sleep(0.05)
    return healed


def yaml_load(state: Path) -> dict[str, Any]:
    return dict(YAML(typ="safe").load(state.read_text()))


def docker_heals(kills: int, removals: int) -> dict[str, list[float]]:
    """The docker runtime: `docker kill` (the container stays and is started again) and `docker rm -f`
    (it is created again from its image) of a service's container → the service answers again."""
    import docker

    engine = docker.from_env()
    extra = {"daemon": {"resync": "1m", "verify_new_sets": False}}
    with bench_stack(extra=extra, runtime="docker") as state:
        stack = yaml_load(state)["stack"]
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "-f", str(state), "daemon"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        try:
            wait_for_event(state, "BackupTaken", 0, timeout=300)
            ports = {name: int(svc["port"]) for name, svc in yaml_load(state)["services"].items()}
            found: dict[str, list[float]] = {}
            for name, port in ports.items():
                found[f"{name} container killed (docker)"] = [
                    heal_time(state, name, port, engine) for _ in range(kills)
                ]
                found[f"{name} container removed (docker)"] = [
                    heal_time(state, name, port, engine, remove=True) for _ in range(removals)
                ]
            return found
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
            for service in ("postgres", "redis"):
                subprocess.run(["docker", "rm", "-f", f"{stack}-{service}"], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--docker-kills", type=int, default=0, help="also the docker runtime (dockerd)")
    parser.add_argument("--docker-removals", type=int, default=3)
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

            ports = {name: int(svc["port"]) for name, svc in yaml.load(state.read_text())["services"].items()}
            heals = {name: [heal_time(state, name, ports[name]) for _ in range(args.kills)] for name in ports}
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

    if args.docker_kills:
        heals.update(docker_heals(args.docker_kills, args.docker_removals))
    latency = statistics.median(latencies)
    heal_rows = [
        {
            "metric": f"{name}{'' if 'docker' in name else ' SIGKILL'} → serving again "
            f"(s, median of {len(samples)})",
            "value": round(statistics.median(samples), 3),
            "target": "< 5",
            "samples": [round(x, 3) for x in samples],
            "baseline_resync_s": 60,
        }
        for name, samples in heals.items()
    ]
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
        *heal_rows,
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
            *[
                [row["metric"], f"{row['value']:.3f}", "< 5", "waiting for the resync: ≤ 60", "-"]
                for row in heal_rows
            ],
        ],
    )
    print(write_results("daemon", rows, idle_seconds=args.idle_seconds))


if __name__ == "__main__":
    main()
