"""Sets across PostgreSQL major versions, for real: a stack on PostgreSQL 13 (Debian 11's, in the
locally built reconciler/postgres:13 image) takes a set; the host's PostgreSQL 15 (Debian 12's)
verifies and restores it. This is the Debian 11 -> 12 upgrade path: its own backups must restore.

A missing engine or image fails loudly: scripts/docker-images builds reconciler/postgres:13.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.integration.test_backups import backup_records, seed, snapshot, text_hash_stats, with_keys
from tests.integration.test_docker_runtime import REDIS_IMAGE, engine  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

PG13_IMAGE = "reconciler/postgres:13"


@pytest.fixture
def pg13_stack(stack: Stack, engine: Any) -> Iterator[Stack]:  # noqa: F811 (the fixture)
    import docker

    try:
        engine.images.get(PG13_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {PG13_IMAGE} missing: run scripts/docker-images (.ci/run does)", pytrace=False)
    document = stack.default_document("ram")
    document["runtime"] = "docker"
    document["services"]["postgres"]["image"] = PG13_IMAGE
    document["services"]["redis"]["image"] = REDIS_IMAGE
    recipient = with_keys(stack)
    document["backup"] = {"encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"}}
    stack.write(document)
    try:
        yield stack
    finally:
        for service in ("postgres", "redis"):
            for container in engine.containers.list(
                all=True, filters={"name": f"{document['stack']}-{service}"}
            ):
                container.remove(force=True)


def test_a_set_taken_on_postgresql_13_verifies_and_restores_on_15(pg13_stack: Stack, tmp_path: Path) -> None:
    stack = pg13_stack
    stack.cli("apply")
    seed(stack, 500)
    on_13 = snapshot(stack)[1], text_hash_stats(stack, recorded=True)
    stack.cli("backup")
    store = stack.dir / "data" / "backups"
    manifest = json.loads(next(store.glob("*.manifest.json")).read_text())
    postgres = next(m for m in manifest["members"] if m["service"] == "postgres")
    assert postgres["server_version"].startswith("13."), postgres["server_version"]
    assert {entry[2] for entry in postgres["check"]["tables"].values()} == {"text"}, "13 has no record hash"
    name = manifest["set"]

    # verify runs scratch servers from the host's binaries: PostgreSQL 15
    stack.cli("verify", name)
    assert backup_records(stack)["verified"][name]["ok"] is True

    # and a stack of the same name on the local runtime (PostgreSQL 15) restores it
    local = Stack(Path(str(stack.dir) + "-local"), Path(str(stack.ram_root) + "-local"))
    local.dir.mkdir(mode=0o755)
    os.chmod(local.dir, 0o755)
    try:
        document = local.default_document("ram")
        document["stack"] = stack.document()["stack"]
        document["backup"] = stack.document()["backup"]
        local.write(document)
        shutil.copytree(stack.dir / "keys", local.dir / "keys")
        local.cli("apply")
        local_store = local.dir / "data" / "backups"
        local_store.mkdir(parents=True, exist_ok=True)
        for path in store.iterdir():
            shutil.copy2(path, local_store / path.name)
        local.cli("restore", name, "--yes", "--no-safety-backup")
        restored = snapshot(local)[1], text_hash_stats(local, recorded=True)
    finally:
        local.teardown()
    # the same redis keys and values, the same rows and row checksums (text form, computable on both)
    assert restored == on_13
