"""Sets across PostgreSQL major versions, for real: a stack on PostgreSQL 13 (Debian 11's, in the
locally built reconciler/postgres:13 image) takes a set; the host's PostgreSQL 15 (Debian 12's)
restores it into scratch servers (verify) and checks it against what 13 recorded. This is the Debian 11 -> 12 upgrade path: its own backups must restore.

A missing engine or image fails loudly: scripts/docker-images builds reconciler/postgres:13.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Stack
from tests.integration.test_backups import backup_records, seed, snapshot, with_keys
from tests.integration.test_docker_runtime import docker_stack, engine  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

PG13_IMAGE = "reconciler/postgres:13"


@pytest.fixture
def pg13_stack(docker_stack: Stack, engine: Any) -> Stack:  # noqa: F811 (the fixtures)
    """docker_stack (which removes the containers afterwards) with PostgreSQL 13 and encrypted sets."""
    import docker

    try:
        engine.images.get(PG13_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {PG13_IMAGE} missing: run scripts/docker-images (.ci/run does)", pytrace=False)
    document = docker_stack.document()
    document["services"]["postgres"]["image"] = PG13_IMAGE
    recipient = with_keys(docker_stack)
    document["backup"] = {"encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"}}
    docker_stack.write(document)
    return docker_stack


def test_a_set_taken_on_postgresql_13_verifies_on_15(pg13_stack: Stack) -> None:
    stack = pg13_stack
    stack.cli("apply")
    seed(stack, 500)
    redis_keys = len(snapshot(stack)[1])
    stack.cli("backup")
    store = stack.dir / "data" / "backups"
    manifest = json.loads(max(store.glob("*-manual.manifest.json")).read_text())  # not apply's first set
    postgres = next(m for m in manifest["members"] if m["service"] == "postgres")
    assert postgres["server_version"].startswith("13."), postgres["server_version"]
    assert {entry[2] for entry in postgres["check"]["tables"].values()} == {"text"}, "13 has no record hash"
    name = manifest["set"]

    # verify restores into scratch servers of the host's binaries, PostgreSQL 15, and checks every
    # table's rows and checksum against what PostgreSQL 13 recorded (recomputed by the recorded method)
    result = json.loads(stack.cli("verify", name, "-o", "json").stdout)
    assert (result["ok"], result["rows"], result["redis_keys"]) == (True, 500, redis_keys)
    assert backup_records(stack)["verified"][name]["ok"] is True
