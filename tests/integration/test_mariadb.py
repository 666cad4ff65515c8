"""MariaDB as a third engine, against real servers: one stack holding PostgreSQL, MariaDB and Redis.

Mirrors the PostgreSQL tests: a round trip restores identical content (per-table row counts and
checksums computed here independently of the reconciler), a tampered set is refused without touching
the live data, a power cut (every process killed, RAM emptied) brings the newest set back, and the
statistics in the signed manifest describe exactly what the dump holds even while a writer keeps
committing during the backup.

The scenarios taking the ``runtime`` fixture run twice: on the local runtime and on the docker runtime
(the three servers in containers from the locally built images, scripts/docker-images), with the same
test bodies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import Stack, _require, free_port
from tests.e2e.test_power_cut import power_cut
from tests.integration.test_backups import member_file, pg, seed, sets, snapshot, with_keys

pytestmark = pytest.mark.integration

PASSWORD = "mdb-secret-Ünï-" + "x" * 12
IMAGES = {
    "postgres": "reconciler/postgres:15",
    "redis": "reconciler/redis:7",
    "mariadb": "reconciler/mariadb:10.11",
}


@pytest.fixture(params=["local", "docker"])
def runtime(request: pytest.FixtureRequest, stack: Stack) -> Iterator[str]:
    """The runtime a scenario runs on; docker: its images must exist, its containers go afterwards."""
    if request.param == "docker":
        import docker

        client = docker.from_env()
        for image in IMAGES.values():
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                pytest.fail(f"image {image} missing: run scripts/docker-images (.ci/run does)", pytrace=False)
    yield str(request.param)
    if request.param == "docker" and stack.state_file.exists():
        stack.cli("down", check=None)
        name = stack.document()["stack"]
        for container in client.containers.list(all=True, filters={"label": f"io.reconciler.stack={name}"}):
            container.remove(force=True)


def containers(stack: Stack) -> list[Any]:
    import docker

    name = stack.document()["stack"]
    return list(docker.from_env().containers.list(all=True, filters={"label": f"io.reconciler.stack={name}"}))


def cut_power(stack: Stack) -> None:
    """Every server of the stack dies at once and the tmpfs comes back empty, as after a reboot."""
    if stack.document()["runtime"] == "docker":
        for container in containers(stack):
            container.kill()
        for entry in stack.ram_root.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    else:
        pid = int((stack.dir / ".reconciler" / "run" / "mariadb" / "mariadb.pid").read_text())
        power_cut(stack)
        os.kill(pid, 9)
    assert not (stack.ram_root / "mariadb").exists()


def mixed_stack(stack: Stack, stores: dict[str, Any] | None = None, runtime: str = "local") -> None:
    """PostgreSQL + MariaDB + Redis in RAM mode, encrypted backups; the user's password from the env.
    On the docker runtime the three run in containers from the locally built images."""
    _require("mariadb", "install it with apt-get install mariadb-server (scripts/bootstrap does)")
    if runtime == "local":
        _require("mariadbd", "install it with apt-get install mariadb-server (scripts/bootstrap does)")
    recipient = with_keys(stack)
    document = stack.default_document("ram")
    stack.mariadb_port = free_port()  # type: ignore[attr-defined]
    document["services"]["mariadb"] = {
        "database": "shop",
        "user": "shop",
        "password_env": "SHOP_DB_PASSWORD",
        "port": stack.mariadb_port,  # type: ignore[attr-defined]
        "disk_dir": "./data/mariadb",
    }
    document["ram"]["tmpfs_size"] = "1GiB"
    if runtime == "docker":
        document["runtime"] = "docker"
        for service, image in IMAGES.items():
            document["services"][service]["image"] = image
    document["backup"] = {
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "retention": {"keep_last": 24},
        **({"stores": stores} if stores else {}),
    }
    stack.env["SHOP_DB_PASSWORD"] = PASSWORD
    stack.write(document)
    stack.cli("apply")


def socket(stack: Stack) -> str:
    return str(stack.dir / ".reconciler" / "run" / "mariadb" / "mariadb.sock")


def sql(stack: Stack, statements: str, database: str = "shop") -> list[list[str]]:
    """Run SQL as root over the stack's socket (the test's own client, not the reconciler's code)."""
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-S", socket(stack), "-u", "root", "-N", "-B", database],
        input=statements.encode(),
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout.decode(errors="surrogateescape")
    return [line.split("\t") for line in out.splitlines()]


def seed_mariadb(stack: Stack, rows: int = 2000, start: int = 0) -> None:
    values = ",".join(
        f"({i}, 'Ware #{i} ✓ ünïcödé', {i * 1.5}, {'NULL' if i % 7 == 0 else repr(str(i))}, UNHEX('00ff{i:04x}'))"
        for i in range(start, start + rows)
    )
    sql(
        stack,
        "CREATE TABLE IF NOT EXISTS orders (id INT PRIMARY KEY, title VARCHAR(200), price DOUBLE, note TEXT, "
        "raw VARBINARY(16)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;"
        "CREATE TABLE IF NOT EXISTS `we``ird name` (k INT) ENGINE=InnoDB;"
        f"INSERT INTO orders VALUES {values};"
        "INSERT INTO `we``ird name` VALUES (1), (2);",
    )


def mariadb_content(stack: Stack, database: str = "shop") -> dict[str, str]:
    """Each table's rows, sorted, hashed: computed by the test, not by the reconciler."""
    content = {}
    for (table,) in sql(stack, "SHOW TABLES", database):
        quoted = "`" + table.replace("`", "``") + "`"
        rows = sql(stack, f"SELECT * FROM {quoted} ORDER BY 1", database)
        content[table] = hashlib.sha256(repr(rows).encode()).hexdigest() + f":{len(rows)}"
    return content


def test_mixed_stack_round_trip_restores_identical_content_in_all_three_engines(
    stack: Stack, runtime: str
) -> None:
    mixed_stack(stack, runtime=runtime)
    seed(stack, 500)
    seed_mariadb(stack)
    before = (snapshot(stack), mariadb_content(stack))
    stack.cli("backup")
    listing = sets(stack)
    manifest = json.loads(
        next((stack.dir / "data" / "backups").glob(f"{listing[0]['name']}.manifest.json")).read_text()
    )
    members = {m["service"]: m for m in manifest["members"]}
    assert set(members) == {"postgres", "redis", "mariadb"}
    assert members["mariadb"]["check"]["tables"]["orders"][0] == 2000
    assert member_file(stack, listing[0]["name"], "mariadb").read_bytes().startswith(b"age-encryption.org/v1")

    sql(stack, "DELETE FROM orders WHERE id % 3 = 0; UPDATE orders SET title = 'changed' WHERE id = 1;")
    sql(stack, "CREATE TABLE extra (x INT); DROP TABLE `we``ird name`;")
    with pg(stack) as conn:
        conn.execute("DELETE FROM discussions WHERE id % 2 = 0")
    redis.Redis(port=stack.redis_port).flushall()
    assert (snapshot(stack), mariadb_content(stack)) != before

    result = stack.cli("restore", "--latest", "--yes")
    assert "restored" in result.stdout
    assert (snapshot(stack), mariadb_content(stack)) == before
    # the application user logs in over TCP with the configured password and sees its tables
    login = subprocess.run(
        ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(stack.mariadb_port), "-u", "shop", "shop"],  # type: ignore[attr-defined]
        input="SELECT COUNT(*) FROM orders;",
        capture_output=True,
        text=True,
        env={**os.environ, "MYSQL_PWD": PASSWORD},
        check=True,
    )
    assert login.stdout.split()[-1] == "2000"
    assert not sql(stack, "SHOW DATABASES LIKE 'shop\\_\\_%'", "mysql")  # no side database left behind
    assert stack.cli("verify").returncode == 0
    assert sets(stack)[0]["verified"]["ok"] is True
    # the password was never written anywhere the reconciler writes
    for path in [*stack.dir.rglob("*"), *stack.ram_root.glob("mariadb/*.err")]:
        if path.is_file() and path.stat().st_size < 50_000_000 and not path.is_socket():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in result.stdout + result.stderr
    for container in containers(stack):  # nor in any container's command line, environment or log
        assert PASSWORD not in json.dumps(container.attrs, ensure_ascii=False), container.name
        assert PASSWORD.encode() not in container.logs(), container.name


def test_a_tampered_mariadb_member_is_refused_and_the_live_data_is_untouched(
    stack: Stack, runtime: str
) -> None:
    mixed_stack(stack, runtime=runtime)
    seed_mariadb(stack, 500)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    sql(stack, "INSERT INTO orders (id, title) VALUES (100000, 'after the backup')")
    current = mariadb_content(stack)
    path = member_file(stack, name, "mariadb")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))

    result = stack.cli("restore", name, "--yes", check=1)
    assert "sha256 does not match" in result.stderr and name in result.stderr
    assert mariadb_content(stack) == current
    verify = stack.cli("verify", name, check=1)
    assert "sha256 does not match" in verify.stderr


def test_a_power_cut_brings_all_three_engines_back_from_the_newest_set(stack: Stack, runtime: str) -> None:
    mixed_stack(stack, runtime=runtime)
    seed(stack, 300)
    seed_mariadb(stack, 1000)
    stack.cli("backup")
    expected = (snapshot(stack), mariadb_content(stack))
    cut_power(stack)

    plan = stack.cli("plan", check=2).stdout
    assert "restore postgres and redis and mariadb from backup set" in plan
    stack.cli("apply")
    assert (snapshot(stack), mariadb_content(stack)) == expected
    stack.cli("plan", check=0)
    assert stack.status()["lastRestore"]["set"] == sets(stack)[0]["name"]


def test_the_manifest_describes_exactly_the_dump_when_a_client_commits_between_the_snapshots(
    stack: Stack,
) -> None:
    """A client commits right after the statistics' snapshot, before the dump takes its own. Commits are
    held back until both snapshots exist, so the row it writes is in neither; without that, the dump
    holds it, the manifest does not, and verification rejects the set. The failpoint's command starts
    the INSERT in the background and returns once it either committed or waits (a condition polled
    with a deadline, never a sleep as synchronisation)."""
    mixed_stack(stack)
    seed_mariadb(stack, 500)
    client = f"mariadb --no-defaults -S {socket(stack)} -u root"
    insert = "INSERT INTO shop.orders (id, title) VALUES (999999, 'between the snapshots')"
    seen = (
        "SELECT (SELECT COUNT(*) FROM shop.orders WHERE id = 999999) + (SELECT COUNT(*) FROM "
        "information_schema.processlist WHERE id <> CONNECTION_ID() AND info LIKE 'INSERT INTO shop.orders%')"
    )
    action = (
        f'sh:{client} -e "{insert}" >/dev/null 2>&1 & i=0; '
        f'while [ "$({client} -N -e "{seen}")" = 0 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done'
    )
    stack.cli("backup", env={"RECONCILER_FAILPOINTS": f"backup.mariadb.stats-snapshot={action}"})
    assert sql(stack, "SELECT COUNT(*) FROM orders WHERE id = 999999") == [["1"]]  # it did commit, later
    manifest = json.loads(
        next((stack.dir / "data" / "backups").glob(f"{sets(stack)[0]['name']}.manifest.json")).read_text()
    )
    tables = next(m for m in manifest["members"] if m["service"] == "mariadb")["check"]["tables"]
    assert tables["orders"][0] == 500
    stack.cli("verify")
    assert sets(stack)[0]["verified"]["ok"] is True


@pytest.mark.parametrize(
    "point",
    ["restore.stage-mariadb.after", "mariadb.swap.renamed", "restore.commit-mariadb.after"],
)
def test_a_restore_killed_around_the_swap_and_resumed_serves_the_chosen_set(stack: Stack, point: str) -> None:
    """Killed after staging (rolled back: the live data stays), between the one RENAME TABLE and the
    clean-up, or after the commit: the next apply never swaps twice (which would move the restored
    tables aside and drop them) and ends with the chosen set's data or, before the point of no return,
    the data the stack served."""
    mixed_stack(stack)
    seed_mariadb(stack, 800)
    stack.cli("backup")
    chosen = mariadb_content(stack)
    sql(stack, "DELETE FROM orders WHERE id < 100; CREATE TABLE later (x INT);")
    current = mariadb_content(stack)
    killed = stack.cli(
        "restore", "--latest", "--yes", check=None, env={"RECONCILER_FAILPOINTS": f"{point}=kill"}
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    stack.cli("apply")
    expected = current if point == "restore.stage-mariadb.after" else chosen
    assert mariadb_content(stack) == expected
    leftovers = sql(stack, "SHOW DATABASES LIKE 'shop\\_\\_%'", "mysql")
    assert not leftovers
    stack.cli("plan", check=0)


OBJECTS = (
    "CREATE TABLE audit (n INT, note VARCHAR(40)) ENGINE=InnoDB;"
    "CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW INSERT INTO audit VALUES (NEW.id, 'geprüft');"
    "CREATE TRIGGER orders_audit_2 AFTER INSERT ON orders FOR EACH ROW FOLLOWS orders_audit "
    "INSERT INTO audit VALUES (-NEW.id, 'zweiter');"
    "CREATE VIEW dear AS SELECT id, title FROM orders WHERE price > 100;"
    "CREATE VIEW dearest AS SELECT id FROM dear WHERE id > 150;"
    "CREATE SQL SECURITY INVOKER VIEW cheap AS SELECT id FROM orders WHERE price <= 100 WITH CHECK OPTION;"
    "CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;\n"
    "DELIMITER //\n"
    "CREATE PROCEDURE count_orders(OUT n INT) BEGIN SELECT COUNT(*) INTO n FROM orders; SELECT n; END//\n"
    "DELIMITER ;\n"
    "CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00' DISABLE DO DELETE FROM audit WHERE n < 0;"
)


def definitions(stack: Stack, database: str = "shop") -> dict[str, list[str]]:
    """Every view, trigger, routine and event as SHOW CREATE prints it (the test's own reading; without
    the creation time and the database's collation, which a restore legitimately changes)."""
    found: dict[str, list[str]] = {}
    for kind, listing, column in (
        ("VIEW", "SELECT table_name FROM information_schema.views WHERE table_schema = DATABASE()", 1),
        (
            "TRIGGER",
            "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = DATABASE()",
            2,
        ),
        ("PROCEDURE", "SELECT name FROM mysql.proc WHERE db = DATABASE() AND type = 'PROCEDURE'", 2),
        ("FUNCTION", "SELECT name FROM mysql.proc WHERE db = DATABASE() AND type = 'FUNCTION'", 2),
        ("EVENT", "SELECT event_name FROM information_schema.events WHERE event_schema = DATABASE()", 3),
    ):
        for (name,) in sql(stack, listing, database):
            row = sql(stack, f"SHOW CREATE {kind} `{name}`", database)[0]
            found[f"{kind} {name}"] = row[: column + 3] if kind != "VIEW" else row
    return found


@pytest.mark.parametrize("point", [None, "mariadb.swap.renamed", "mariadb.swap.objects"])
def test_a_restore_brings_back_views_triggers_routines_and_events_as_the_set_holds_them(
    stack: Stack, point: str | None
) -> None:
    """A deliberate restore of a database with views, triggers (two, in firing order), a function, a
    procedure and an event: the tables swap in, the objects are re-created from the set's definitions
    (equal to what SHOW CREATE printed before the backup) and work; objects made after the set are gone.
    Killed between the rename and the objects, or before the clean-up: the next apply completes it."""
    mixed_stack(stack)
    seed_mariadb(stack, 200)
    sql(stack, OBJECTS)
    sql(stack, "INSERT INTO orders (id, title, price) VALUES (50000, 'audited', 500)")
    stack.cli("backup")
    expected, objects = mariadb_content(stack), definitions(stack)
    assert len(objects) == 8
    manifest = json.loads(
        next((stack.dir / "data" / "backups").glob(f"{sets(stack)[0]['name']}.manifest.json")).read_text()
    )
    tables = next(m for m in manifest["members"] if m["service"] == "mariadb")["check"]["tables"]
    assert tables["dear"][0] is None and tables["trigger:orders_audit"][2] == "definition-sha256"
    assert {"procedure:count_orders", "function:double_it", "event:tidy"} <= set(tables)
    sql(
        stack,
        "DROP VIEW dearest; DROP TRIGGER orders_audit_2; DROP PROCEDURE count_orders;"
        "CREATE PROCEDURE count_orders(OUT n INT) SELECT 42 INTO n;"
        "CREATE VIEW later AS SELECT 1; CREATE TRIGGER later_t BEFORE DELETE ON audit FOR EACH ROW SET @x = 1;"
        "INSERT INTO orders (id, title) VALUES (60000, 'after the set'); DELETE FROM orders WHERE id < 50",
    )
    env = {"RECONCILER_FAILPOINTS": f"{point}=kill"} if point else None
    done = stack.cli("restore", "--latest", "--yes", check=None, env=env)
    if point:
        assert done.returncode == -9, done.stderr[-2000:]
        stack.cli("apply")
    else:
        assert done.returncode == 0, done.stderr[-2000:]
    assert definitions(stack) == objects
    assert mariadb_content(stack) == expected
    sql(stack, "INSERT INTO orders (id, title) VALUES (70000, 'after the restore')")
    assert sql(stack, "SELECT n, note FROM audit WHERE abs(n) = 70000 ORDER BY n DESC") == [
        ["70000", "geprüft"],
        ["-70000", "zweiter"],
    ]
    assert sql(stack, "CALL count_orders(@n); SELECT double_it(@n)")[-1] == [str(2 * 202)]
    assert not sql(stack, "SHOW DATABASES LIKE 'shop\\_\\_%'", "mysql")
    stack.cli("plan", check=0)


def test_a_power_cut_restores_views_and_triggers_into_the_empty_database(stack: Stack) -> None:
    mixed_stack(stack)
    seed_mariadb(stack, 200)
    sql(stack, OBJECTS)
    stack.cli("backup")
    expected, objects = mariadb_content(stack), definitions(stack)
    pid = int((stack.dir / ".reconciler" / "run" / "mariadb" / "mariadb.pid").read_text())
    power_cut(stack)
    os.kill(pid, 9)
    stack.cli("apply")
    assert (mariadb_content(stack), definitions(stack)) == (expected, objects)


def test_disaster_recovery_by_hand_with_age_zstd_and_the_mariadb_client(stack: Stack) -> None:
    mixed_stack(stack)
    seed_mariadb(stack, 300)
    stack.cli("backup")
    member = member_file(stack, sets(stack)[0]["name"], "mariadb")
    key = stack.dir / "keys" / "backup.key"
    sql(stack, "CREATE DATABASE by_hand", "mysql")
    subprocess.run(
        f"age -d -i {key} {member} | zstd -d | mariadb --no-defaults -S {socket(stack)} -u root by_hand",
        shell=True,
        check=True,
    )
    assert mariadb_content(stack, "by_hand") == mariadb_content(stack)


def test_with_every_local_set_gone_a_power_cut_restores_all_three_engines_from_drive(
    stack: Stack, emulator: Any, runtime: str
) -> None:
    from tests.integration.test_gdrive import authorized_user_file

    folder = emulator.make_folder()
    (stack.dir / "keys").mkdir(mode=0o700)
    credentials = authorized_user_file(stack.dir / "keys" / "gdrive.json", emulator)
    gdrive = {"enabled": True, "folder_id": folder, "credentials_file": credentials, "api_url": emulator.url}
    mixed_stack(stack, {"gdrive": {**gdrive, "chunk_size": "256KiB"}}, runtime)
    seed(stack, 200)
    seed_mariadb(stack, 700)
    stack.cli("backup")
    assert any(name.endswith(".mariadb.sql.zst.age") for name in emulator.names_in(folder))
    expected = (snapshot(stack), mariadb_content(stack))
    cut_power(stack)
    for path in (stack.dir / "data" / "backups").iterdir():
        path.unlink()
    assert "(gdrive store)" in stack.cli("plan", check=2).stdout
    stack.cli("apply")
    assert (snapshot(stack), mariadb_content(stack)) == expected
    assert stack.status()["lastRestore"]["store"] == "gdrive"


def test_a_dump_that_fails_leaves_no_set_and_never_holds_commits_back(stack: Stack) -> None:
    """mariadb-dump exits early (here: a character set it does not know) while the snapshot gate holds
    commits: the backup fails with the dump's own words, writes no member, and commits flow again."""
    mixed_stack(stack)
    document = stack.document()
    document["services"]["mariadb"]["dump_options"] = ["--default-character-set=nosuchcharset"]
    stack.write(document)
    seed_mariadb(stack, 50)
    store = stack.dir / "data" / "backups"
    before = sorted(p.name for p in store.iterdir())  # the first set apply took
    failed = stack.cli("backup", check=1)
    assert "nosuchcharset" in failed.stderr
    assert sorted(p.name for p in store.iterdir()) == before
    assert [s["trigger"] for s in sets(stack)] == ["first"]
    sql(stack, "INSERT INTO orders (id, title) VALUES (424242, 'after the failed backup')")
    assert sql(stack, "SELECT COUNT(*) FROM orders") == [["51"]]


def test_a_row_larger_than_half_the_default_packet_survives_a_round_trip(stack: Stack) -> None:
    """A 9 MB blob is a legal row (the statement that wrote it is tiny), but `--hex-blob` makes its
    INSERT 18 MB: a restore must not be refused by the client's or the server's default 16 MB packet."""
    mixed_stack(stack)
    sql(
        stack,
        "CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB;"
        "INSERT INTO big VALUES (1, REPEAT(UNHEX('ab'), 9000000)), (2, 'small');",
    )
    before = mariadb_content(stack)
    stack.cli("backup")
    sql(stack, "DELETE FROM big")
    stack.cli("restore", "--latest", "--yes")
    assert mariadb_content(stack) == before


WRITER = (
    "CREATE TABLE hits (id INT AUTO_INCREMENT PRIMARY KEY, at DOUBLE, page VARCHAR(40)) ENGINE=MyISAM;"
    "CREATE TABLE visits (id INT AUTO_INCREMENT PRIMARY KEY, n INT) ENGINE=Aria;"
    "CREATE TABLE stop_writer (x INT) ENGINE=InnoDB;\n"
    "DELIMITER //\n"
    "CREATE PROCEDURE write_on() BEGIN WHILE NOT EXISTS (SELECT 1 FROM stop_writer) DO "
    "INSERT INTO hits (at, page) VALUES (RAND(), 'index'); INSERT INTO visits (n) VALUES (1); DO SLEEP(0.0005); "
    "END WHILE; END//\n"
    "DELIMITER ;\n"
)


def test_a_writer_on_myisam_and_aria_tables_during_a_backup_cannot_make_the_set_disagree_with_its_manifest(
    stack: Stack,
) -> None:
    """MyISAM and Aria have no snapshot: the dump and the manifest's statistics read them at different
    moments. A writer keeps inserting into both all through the backup; the set must still restore
    (in verify's scratch server and live) to exactly the row counts and sums its manifest holds."""
    mixed_stack(stack)
    seed_mariadb(stack, 300)
    sql(stack, WRITER)
    writer = subprocess.Popen(
        ["mariadb", "--no-defaults", "-S", socket(stack), "-u", "root", "shop", "-e", "CALL write_on()"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while int(sql(stack, "SELECT COUNT(*) FROM hits")[0][0]) < 500:
            assert time.monotonic() < deadline and writer.poll() is None, writer.stderr
        stack.cli("backup")
        written = int(sql(stack, "SELECT COUNT(*) FROM hits")[0][0])
        while int(sql(stack, "SELECT COUNT(*) FROM hits")[0][0]) == written:  # still writing after the set
            assert time.monotonic() < deadline and writer.poll() is None, writer.stderr
    finally:
        sql(stack, "INSERT INTO stop_writer VALUES (1)")
        writer.wait(60)
    name = sets(stack)[0]["name"]
    manifest = json.loads(next((stack.dir / "data" / "backups").glob(f"{name}.manifest.json")).read_text())
    tables = next(m for m in manifest["members"] if m["service"] == "mariadb")["check"]["tables"]
    assert tables["hits"][0] >= 500 and tables["visits"][0] >= 500
    stack.cli("verify", name)
    assert sets(stack)[0]["verified"]["ok"] is True
    stack.cli("restore", name, "--yes")
    assert sql(stack, "SELECT COUNT(*) FROM hits") == [[str(tables["hits"][0])]]
    assert sql(stack, "SELECT COUNT(*) FROM visits") == [[str(tables["visits"][0])]]


def test_a_failing_restore_never_echoes_row_data_into_errors_events_status_or_logs(stack: Stack) -> None:
    """Two FLOAT values that differ in the server but print alike in the dump collide in a unique key
    when the set is loaded: the client fails, echoing the whole INSERT (row data) and the server's
    `Duplicate entry '<row data>'`. The marker in that row appears in no CLI output, event, status
    file or log; the error still says what happened (its code)."""
    marker = "ROW-MARKER-" + os.urandom(6).hex()
    mixed_stack(stack)
    sql(
        stack,
        "CREATE TABLE readings (id INT PRIMARY KEY, label VARCHAR(200), f FLOAT, UNIQUE KEY u (label, f));"
        f"INSERT INTO readings VALUES (1, '{marker}-{'x' * 150}', 1.0000001), (2, '{marker}-{'x' * 150}', 1.0000002);",
    )
    stack.cli("backup")
    outputs = [stack.cli("restore", "--latest", "--yes", check=1), stack.cli("verify", check=1)]
    assert "1062" in outputs[0].stderr or "1180" in outputs[0].stderr, outputs[0].stderr[-1000:]
    assert all(marker not in o.stdout + o.stderr for o in outputs)
    found = []
    for path in (stack.dir / ".reconciler").rglob("*"):
        if path.is_file() and not path.is_socket() and marker.encode() in path.read_bytes():
            found.append(str(path))
    assert not found
    assert marker not in json.dumps(stack.status())
    assert sql(stack, "SELECT COUNT(*) FROM readings") == [["2"]]  # the live data untouched
