"""MariaDB in the pure layers: its spec block and how its loader's errors are classified."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import SpecInvalid
from reconciler.plan.faults import HOST_SIGNATURES, Stage, Verdict, verdict
from reconciler.spec.loader import parse_state

STACK = """\
version: 1
stack: shop
runtime: {runtime}
mode: ram
services:
  postgres: {{database: app, user: app, port: 5433, disk_dir: ./data/postgres}}
  redis: {{port: 6380, disk_dir: ./data/redis}}
  mariadb:
    database: {database}
    user: {user}
    password_env: SHOP_DB_PASSWORD
    port: {port}
    disk_dir: ./data/mariadb
    dump_options: {options}
backup: {{encryption: none}}
"""


def state(
    runtime: str = "local",
    database: str = "shop",
    user: str = "shop",
    port: int = 3307,
    options: str = "[--order-by-primary]",
) -> str:
    return STACK.format(runtime=runtime, database=database, user=user, port=port, options=options)


def problems(text: str) -> str:
    with pytest.raises(SpecInvalid) as caught:
        parse_state(text, "state.yaml", "/srv/shop")
    return "\n".join(str(p) for p in caught.value.problems)


def test_a_stack_holds_all_three_engines() -> None:
    spec = parse_state(state(), "state.yaml", "/srv/shop")
    assert list(spec.services.configured()) == ["postgres", "redis", "mariadb"]
    assert spec.disk_dir("mariadb") == "/srv/shop/data/mariadb"
    assert spec.services.database_of("mariadb") == "shop"
    assert spec.services.database_of("redis") is None


def test_a_docker_stack_holds_all_three_engines_with_their_images() -> None:
    text = state(runtime="docker").replace(
        "    disk_dir: ./data/mariadb\n",
        "    disk_dir: ./data/mariadb\n    container: shop-db\n    image: reconciler/mariadb:10.11\n",
    )
    spec = parse_state(text, "state.yaml", "/srv/shop")
    mariadb = spec.services.mariadb
    assert spec.runtime == "docker" and mariadb is not None
    assert (mariadb.container, mariadb.image) == ("shop-db", "reconciler/mariadb:10.11")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"database": "mysql"}, "system database"),
        ({"database": "shop__restoring"}, "restore staging"),
        ({"database": "'shop; DROP'"}, "services.mariadb.database"),
        ({"user": "root"}, "system account"),
        ({"port": 5433}, "port 5433 is also services.postgres.port's"),
        ({"options": "[--where=1]"}, "mariadb-dump option '--where=1' is not allowed"),
        ({"options": "[--no-data]"}, "is not allowed"),
        ({"options": "[--result-file=/tmp/x]"}, "is not allowed"),
    ],
)
def test_what_cannot_work_is_refused_at_validation(change: dict[str, object], expected: str) -> None:
    assert expected in problems(state(**change))  # type: ignore[arg-type]


# MariaDB's client quotes the dump's own text after "near '" (a syntax error) and the errno's text in
# double quotes; only its own words are evidence about the host.
dump_text = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=80)


@given(st.sampled_from(HOST_SIGNATURES), dump_text)
def test_a_host_phrase_inside_the_echoed_dump_text_still_rejects_the_set(signature: str, tail: str) -> None:
    detail = (
        "ERROR 1064 (42000) at line 31: You have an error in your SQL syntax; check the manual that "
        f"corresponds to your MariaDB server version for the right syntax to use near '{signature}{tail}' at line 1"
    )
    assert verdict(Stage.LOAD, detail) is Verdict.REJECT


@pytest.mark.parametrize(
    "detail",
    [
        "ERROR 3 (HY000) at line 40: Error writing file './shop__restoring/#sql-1.frm' "
        '(Errcode: 28 "No space left on device")',
        "ERROR 1114 (HY000) at line 57: The table `orders` is full",
        "ERROR 2013 (HY000) at line 12: Lost connection to server during query",
        "ERROR 2006 (HY000) at line 12: MySQL server has gone away",
        "ERROR 2002 (HY000): Can't connect to local server through socket '/run/x/mariadb.sock' (2)",
        "ERROR 23 (HY000) at line 9: Out of resources when opening file './shop/orders.ibd' "
        '(Errcode: 24 "Too many open files")',
    ],
)
def test_a_load_failing_for_the_host_is_retried(detail: str) -> None:
    assert verdict(Stage.LOAD, detail) is Verdict.RETRY


def test_a_dump_mariadb_refuses_rejects_the_set() -> None:
    for detail in (
        "ERROR 1064 (42000) at line 1: You have an error in your SQL syntax; check the manual near 'garbage'",
        "ERROR 1146 (42S02) at line 88: Table 'shop.orders' doesn't exist",
        "ERROR: ASCII '\\0' appeared in the statement, but this is not allowed unless option --binary-mode",
    ):
        assert verdict(Stage.LOAD, detail) is Verdict.REJECT, detail
