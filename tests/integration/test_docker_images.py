"""scripts/docker-images: one recipe hash per image, so adding or changing one image rebuilds only it.

The script runs for real (bash) on a copy of its inputs; ``--recipes`` prints each image's recipe hash,
the label an image is rebuilt by when it differs. Nothing is built here: the shared engine's images stay.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def recipes(root: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(root / "scripts" / "docker-images"), "--recipes"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split() for line in out.splitlines())


def test_changing_one_image_changes_only_its_own_recipe(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "docker-images", tmp_path / "scripts")
    shutil.copytree(ROOT / "compose" / "images", tmp_path / "compose" / "images")
    before = recipes(tmp_path)
    assert set(before) == {
        "reconciler/postgres:15",
        "reconciler/redis:7",
        "reconciler/app:1",
        "reconciler/postgres:13",
        "reconciler/mariadb:10.11",
    }
    assert len(set(before.values())) == len(before)

    with (tmp_path / "compose" / "images" / "mariadb-entrypoint.sh").open("a") as handle:
        handle.write("# changed\n")
    after_mariadb = recipes(tmp_path)
    assert {t for t in before if before[t] != after_mariadb[t]} == {"reconciler/mariadb:10.11"}

    with (tmp_path / "compose" / "images" / "entrypoint.sh").open("a") as handle:
        handle.write("# changed\n")
    after_shared = recipes(tmp_path)
    assert {t for t in before if after_mariadb[t] != after_shared[t]} == set(before) - {
        "reconciler/mariadb:10.11"
    }

    # the script itself (e.g. an image added to it) is no image's recipe
    with (tmp_path / "scripts" / "docker-images").open("a") as handle:
        handle.write("# another image would go here\n")
    assert recipes(tmp_path) == after_shared


def test_the_built_mariadb_image_is_current_so_building_it_again_does_nothing() -> None:
    label = docker.from_env().images.get("reconciler/mariadb:10.11").labels.get("reconciler.recipe")
    assert label == recipes(ROOT)["reconciler/mariadb:10.11"]
