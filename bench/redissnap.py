"""The cost of one Redis snapshot between sets (``backup.continuous.redis_every``).

Measures, on a throw-away ``redis-server`` holding N keys: wall time of ``backup/redissnap.take``
(BGSAVE, then the RDB through zstd → age into a local store with a signed sidecar), the reconciler's
CPU per snapshot, the BGSAVE child's CPU (Redis's ``used_cpu_*_children``), raw RDB and stored size.

Usage: python bench/redissnap.py [--keys 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from reconciler.backup import keys, redissnap
from reconciler.backup.create import Sealing
from reconciler.runtimes.base import Endpoint
from reconciler.stores.local import LocalStore
from tests.support.ports import free_port


def _cpu(info: dict[str, float], which: str) -> float:
    return float(info[f"used_cpu_user{which}"]) + float(info[f"used_cpu_sys{which}"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="redissnap-bench-")
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--dir", work, "--daemonize", "yes", "--save", ""]
    subprocess.run([*argv, "--pidfile", f"{work}/redis.pid", "--logfile", f"{work}/redis.log"], check=True)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:  # wait for the server to answer
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        with client.pipeline(transaction=False) as pipe:
            for i in range(args.keys):
                pipe.set(f"session:{i:08d}", f"user-{i}-" + "x" * 40)
            pipe.execute()
        keys.generate(f"{work}/backup.key")
        identity = keys.load(f"{work}/backup.key")
        recipient = identity.to_public()
        sealing = Sealing([recipient], [str(recipient)], keys.mac_key(identity))
        store = LocalStore(f"{work}/store")
        endpoint = Endpoint("127.0.0.1", port)
        walls, cpus = [], []
        before = client.info("cpu")
        document: dict[str, object] = {}
        for counter in range(1, args.runs + 1):
            usage, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            document = redissnap.take(store, endpoint, counter, "", sealing, "bench", "")
            walls.append(time.monotonic() - started)
            after_usage = resource.getrusage(resource.RUSAGE_SELF)
            cpus.append(after_usage.ru_utime - usage.ru_utime + after_usage.ru_stime - usage.ru_stime)
        after = client.info("cpu")
        child = (_cpu(after, "_children") - _cpu(before, "_children")) / args.runs
        print(
            f"keys {client.dbsize()}, used_memory {client.info('memory')['used_memory_human']}: "
            f"RDB {document['raw_size']} bytes, stored {document['size']} bytes; "
            f"wall median {statistics.median(walls):.3f} s (min {min(walls):.3f}, max {max(walls):.3f}); "
            f"reconciler CPU {statistics.median(cpus):.3f} s, BGSAVE child CPU {child:.3f} s per snapshot"
        )
    finally:
        client.shutdown(nosave=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
