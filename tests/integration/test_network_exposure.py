"""No managed database accepts an unauthenticated connection from outside the host, on both runtimes.

A second network namespace stands in for "another machine": a veth pair joins it to the host, and
from inside it ``psql`` (no password) and ``redis-cli`` (no password) try every address of the host.
The probe first proves it can reach a listener on the host's addresses at all, so a passing test
never means "the namespace had no route". The docker images are also run the most exposed way a
user might configure them (PostgreSQL listening on every address, Redis without ``--bind``): their
entrypoint must still refuse strangers.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Stack, free_port
from tests.integration.test_docker_runtime import PG_IMAGE, REDIS_IMAGE, docker_document, engine  # noqa: F401

pytestmark = pytest.mark.integration


class Namespace:
    def __init__(self, name: str, targets: list[str]) -> None:
        self.name = name
        self.targets = targets  # the host's addresses, as seen from the namespace

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def tcp_connects(self, address: str, port: int) -> bool:
        return self.run("timeout", "5", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}").returncode == 0

    def assert_postgres_refuses(self, port: int) -> None:
        for address in self.targets:
            for user in ("postgres", "app"):
                result = self.run(
                    "env",
                    "PGCONNECT_TIMEOUT=5",
                    "psql",
                    "-w",
                    "-X",
                    "-At",
                    "-c",
                    "SELECT 'in'",
                    f"host={address} port={port} user={user} dbname=postgres sslmode=disable",
                )
                assert result.returncode != 0 and "in" not in result.stdout.split(), (
                    address,
                    port,
                    user,
                    result,
                )

    def assert_redis_refuses(self, port: int) -> None:
        for address in self.targets:
            result = self.run("redis-cli", "-h", address, "-p", str(port), "PING", timeout=10)
            assert "PONG" not in result.stdout, (address, port, result.stdout)


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return [
        entry["local"]
        for link in json.loads(out)
        for entry in link.get("addr_info", [])
        if not ipaddress.ip_address(entry["local"]).is_loopback
    ]


@pytest.fixture
def netns() -> Iterator[Namespace]:
    tag = uuid.uuid4().hex[:6]
    name, host_if, ns_if = f"rcl-{tag}", f"rv{tag}h", f"rv{tag}n"
    subnet = ipaddress.ip_network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/30")
    host_ip, ns_ip = (str(a) for a in list(subnet.hosts())[:2])

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", name)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        sh("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "ip", "route", "add", "default", "via", host_ip)
        namespace = Namespace(name, [host_ip, *_host_addresses()])
        _prove_the_probe_reaches_the_host(namespace)
        yield namespace
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _prove_the_probe_reaches_the_host(namespace: Namespace) -> None:
    with socket.create_server(("0.0.0.0", 0)) as listener:
        port = listener.getsockname()[1]
        accepted = threading.Thread(target=lambda: [listener.accept()[0].close() for _ in namespace.targets])
        accepted.start()
        for address in namespace.targets:
            assert namespace.tcp_connects(address, port), f"the namespace cannot reach {address}:{port}"
        accepted.join(10)


def test_the_local_runtime_refuses_strangers(stack: Stack, netns: Namespace) -> None:
    document = stack.default_document()
    document["services"]["postgres"]["password_env"] = "APP_DB_PASSWORD"
    stack.write(document)
    stack.env["APP_DB_PASSWORD"] = uuid.uuid4().hex
    stack.cli("apply")
    netns.assert_postgres_refuses(stack.pg_port)
    netns.assert_redis_refuses(stack.redis_port)


def _wait(what: str, ready: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not come up within {timeout} s")


def test_the_docker_images_refuse_strangers_even_listening_everywhere(
    engine: Any,  # noqa: F811
    netns: Namespace,
) -> None:
    pg_port, redis_port = free_port(), free_port()
    tag = uuid.uuid4().hex[:8]
    containers = []
    try:
        containers.append(
            engine.containers.run(
                PG_IMAGE,
                ["postgres", "-p", str(pg_port)],
                name=f"exposure-pg-{tag}",
                environment={"POSTGRES_USER": "postgres", "POSTGRES_LISTEN_ADDRESSES": "*"},
                network_mode="host",
                detach=True,
            )
        )
        containers.append(
            engine.containers.run(
                REDIS_IMAGE,
                ["redis-server", "--port", str(redis_port)],
                name=f"exposure-redis-{tag}",
                network_mode="host",
                detach=True,
            )
        )
        _wait(
            "postgres",
            lambda: (
                subprocess.run(
                    ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(pg_port)], check=False
                ).returncode
                == 0
            ),
        )
        _wait(
            "redis",
            lambda: (
                b"PONG"
                in subprocess.run(
                    ["redis-cli", "-p", str(redis_port), "PING"], capture_output=True, check=False
                ).stdout
            ),
        )
        assert netns.tcp_connects(netns.targets[0], pg_port), "postgres should listen on every address here"
        assert netns.tcp_connects(netns.targets[0], redis_port), "redis should listen on every address here"
        netns.assert_postgres_refuses(pg_port)
        netns.assert_redis_refuses(redis_port)
    finally:
        for container in containers:
            container.remove(force=True)


def test_the_docker_runtime_refuses_strangers(stack: Stack, engine: Any, netns: Namespace) -> None:  # noqa: F811
    document = docker_document(stack)
    stack.write(document)
    try:
        stack.cli("apply")
        netns.assert_postgres_refuses(stack.pg_port)
        netns.assert_redis_refuses(stack.redis_port)
    finally:
        for service in ("postgres", "redis"):
            for container in engine.containers.list(
                all=True, filters={"name": f"{document['stack']}-{service}"}
            ):
                container.remove(force=True)
