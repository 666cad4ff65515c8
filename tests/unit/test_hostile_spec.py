"""Issue 13's corpus of malformed state files, kept as a test: every one is refused with ``SpecInvalid``
(exit 64) and a ``line:column`` pointing at the cause; none crashes, hangs or is accepted. A hypothesis
fuzz then holds the loader to the rule for any input: a valid spec or ``SpecInvalid``, nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrage import x25519
from ruamel.yaml import YAML

from reconciler.errors import SpecInvalid
from reconciler.spec.loader import MAX_STATE_BYTES, parse_state, parse_state_bytes
from reconciler.spec.model import StateSpec
from reconciler.spec.recipients import recipient_problem

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
version: 1
stack: demo
mode: ram
services:
  postgres:
    database: app
    user: app
    disk_dir: ./data/pg
  redis:
    disk_dir: ./data/redis
"""
NEXT = BASE.count("\n") + 1  # the line a snippet appended to BASE starts on


def _bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["a0: &a0 [x]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _replace(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


# id: (text, "line:column", key path, a fragment of the message)
CORPUS: dict[str, tuple[str, str, str, str]] = {
    # 'internal error' before
    "cadence of 10^14 seconds": (
        BASE + "backup: {cadence: 100000000000000}\n",
        f"{NEXT}:19",
        "backup.cadence",
        "too long: at most 3650d",
    ),
    "cadence of 20 nines days": (
        BASE + "backup: {cadence: 99999999999999999999d}\n",
        f"{NEXT}:19",
        "backup.cadence",
        "too long",
    ),
    "size of 400 nines TiB": (
        BASE + f"ram: {{tmpfs_size: {'9' * 400}TiB}}\n",
        f"{NEXT}:19",
        "ram.tmpfs_size",
        "too large",
    ),
    "min_headroom of 400 nines TiB": (
        BASE + f"ram: {{min_headroom: {'9' * 400}TiB}}\n",
        f"{NEXT}:21",
        "ram.min_headroom",
        "too large",
    ),
    "reserved role prefix pg_": (
        _replace("user: app", "user: pg_adv"),
        "7:11",
        "services.postgres.user",
        "reserved by PostgreSQL",
    ),
    "merge key": (BASE + "x: &m {a: 1}\n<<: *m\n", f"{NEXT + 1}:1", "(top level)", "merge keys"),
    # accepted before, failing or misbehaving later
    "tmpfs_size 0 (an unlimited tmpfs)": (
        BASE + "ram: {tmpfs_size: 0}\n",
        f"{NEXT}:19",
        "ram.tmpfs_size",
        "between 64MiB and 64TiB",
    ),
    "tmpfs_size 999TiB": (BASE + "ram: {tmpfs_size: 999TiB}\n", f"{NEXT}:19", "ram.tmpfs_size", "64TiB"),
    "tmpfs_size 0%": (
        BASE + "ram: {tmpfs_size: 0%}\n",
        f"{NEXT}:19",
        "ram.tmpfs_size",
        "between 1% and 100%",
    ),
    "duplicate ports between services": (
        _replace("    disk_dir: ./data/redis", "    disk_dir: ./data/redis\n    port: 5432"),
        f"{NEXT}:11",
        "services.redis.port",
        "port 5432 is also services.postgres.port's",
    ),
    "metrics_port equal to a service port": (
        BASE + "daemon: {metrics_port: 6379}\n",
        f"{NEXT}:24",
        "daemon.metrics_port",
        "also services.redis.port's",
    ),
    "ram.path /": (BASE + "ram: {path: /}\n", f"{NEXT}:13", "ram.path", "/ is a system directory"),
    "ram.path /etc": (BASE + "ram: {path: /etc}\n", f"{NEXT}:13", "ram.path", "/etc is a system directory"),
    "ram.path inside /proc": (BASE + "ram: {path: /proc/x}\n", f"{NEXT}:13", "ram.path", "system directory"),
    "state_dir /etc": (BASE + "state_dir: /etc\n", f"{NEXT}:12", "state_dir", "system directory"),
    "disk_dir /var/lib": (
        _replace("disk_dir: ./data/pg", "disk_dir: /var/lib"),
        "8:15",
        "services.postgres.disk_dir",
        "system directory",
    ),
    "disk_dir equal to the backup store": (
        _replace("disk_dir: ./data/pg", "disk_dir: ./data/backups"),
        "8:15",
        "services.postgres.disk_dir",
        "is services.postgres.disk_dir",
    ),
    "disk_dir inside the backup store": (
        _replace("disk_dir: ./data/pg", "disk_dir: ./data/backups/pg"),
        "8:15",
        "services.postgres.disk_dir",
        "holds services.postgres.disk_dir",
    ),
    "backup store inside a disk_dir": (
        BASE + "backup: {stores: {local: {path: ./data/pg/backups}}}\n",
        f"{NEXT}:33",
        "backup.stores.local.path",
        "is inside services.postgres.disk_dir",
    ),
    "two services share a disk_dir": (
        _replace("disk_dir: ./data/redis", "disk_dir: ./data/pg"),
        "10:15",
        "services.redis.disk_dir",
        "is services.postgres.disk_dir",
    ),
    "disk_dir holds state.yaml": (
        _replace("disk_dir: ./data/pg", "disk_dir: ."),
        "8:15",
        "services.postgres.disk_dir",
        "holds state.yaml's own directory",
    ),
    "backup store on the RAM root": (
        BASE + "ram: {path: /dev/shm/r}\nbackup: {stores: {local: {path: /dev/shm/r/backups}}}\n",
        f"{NEXT + 1}:33",
        "backup.stores.local.path",
        "is inside ram.path",
    ),
    "retention all zeros": (
        BASE
        + "backup:\n  retention: {keep_last: 0, keep_hourly: 0, keep_daily: 0, keep_weekly: 0, keep_monthly: 0}\n",
        f"{NEXT + 1}:14",
        "backup.retention",
        "keep no backup set",
    ),
    "cadence 0s": (BASE + "backup: {cadence: 0s}\n", f"{NEXT}:19", "backup.cadence", "between 5s and 30d"),
    "resync 0s": (BASE + "daemon: {resync: 0s}\n", f"{NEXT}:18", "daemon.resync", "between 1s and 1d"),
    "backoff_max 0s": (BASE + "daemon: {backoff_max: 0}\n", f"{NEXT}:23", "daemon.backoff_max", "between 2s"),
    "stale_after shorter than cadence": (
        BASE + "backup: {cadence: 2h, stale_after: 1h}\n",
        f"{NEXT}:36",
        "backup.stale_after",
        "longer than cadence",
    ),
    "stale_after equal to cadence": (
        BASE + "backup: {cadence: 2h, stale_after: 2h}\n",
        f"{NEXT}:36",
        "backup.stale_after",
        "longer than cadence",
    ),
    "invalid age recipient": (
        BASE + "backup: {encryption: {recipients: [age1notakey]}}\n",
        f"{NEXT}:35",
        "backup.encryption.recipients",
        "not an age public key",
    ),
    "age recipient with a typo": (
        BASE
        + "backup: {encryption: {recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8q]}}\n",
        f"{NEXT}:35",
        "backup.encryption.recipients",
        "wrong checksum",
    ),
    "port: true (was port 1)": (
        _replace("    disk_dir: ./data/redis", "    disk_dir: ./data/redis\n    port: true"),
        f"{NEXT}:11",
        "services.redis.port",
        "valid integer",
    ),
    "port: 6379.5": (
        _replace("    disk_dir: ./data/redis", "    disk_dir: ./data/redis\n    port: 6379.5"),
        f"{NEXT}:11",
        "services.redis.port",
        "valid integer",
    ),
    "version: true": (_replace("version: 1", "version: true"), "1:10", "version", "must be 1"),
    "dump_options -Fp (plain format)": (
        _replace("    disk_dir: ./data/pg", "    disk_dir: ./data/pg\n    dump_options: ['-Fp']"),
        "9:19",
        "services.postgres.dump_options",
        "is not allowed",
    ),
    "dump_options --file": (
        _replace("    disk_dir: ./data/pg", "    disk_dir: ./data/pg\n    dump_options: [--file=/tmp/x]"),
        "9:19",
        "services.postgres.dump_options",
        "--file=/tmp/x",
    ),
    "dump_options --schema-only": (
        _replace("    disk_dir: ./data/pg", "    disk_dir: ./data/pg\n    dump_options: [--schema-only]"),
        "9:19",
        "services.postgres.dump_options",
        "complete",
    ),
    "dump_options --exclude-table": (
        _replace("    disk_dir: ./data/pg", "    disk_dir: ./data/pg\n    dump_options: [-T, users]"),
        "9:19",
        "services.postgres.dump_options",
        "not allowed",
    ),
    "chunk_size 0": (
        BASE + "backup: {stores: {gdrive: {chunk_size: 0}}}\n",
        f"{NEXT}:40",
        "backup.stores.gdrive.chunk_size",
        "between 256KiB and 256MiB",
    ),
    "a database named template1": (
        _replace("database: app", "database: template1"),
        "6:15",
        "services.postgres.database",
        "template database",
    ),
    "a path with a NUL character": (
        BASE + 'state_dir: "a\\0b"\n',
        f"{NEXT}:12",
        "state_dir",
        "NUL",
    ),
    "a container name that is an option": (
        BASE + "drain: {containers: [--rm]}\n",
        f"{NEXT}:22",
        "drain.containers[0]",
        "pattern",
    ),
    # denial of service and YAML features state.yaml does not use
    "billion laughs": (BASE + _bomb(), f"{NEXT + 4}:", "", "expands to more than 10000 values"),
    "quadratic blow-up through one wide alias": (
        BASE + "a: &a [" + ", ".join(["x"] * 200) + "]\nb: [" + ", ".join(["*a"] * 200) + "]\n",
        f"{NEXT + 1}:",
        "b[",
        "expands to more than 10000 values",
    ),
    "deep nesting": (BASE + "x: " + "[" * 5000 + "]" * 5000 + "\n", f"{NEXT}:", "x", "nested deeper than 32"),
    "an alias to its own container": (BASE + "x: &a [*a]\n", f"{NEXT}:8", "x[0]", "contains it"),
    "an undefined alias": (BASE + "x: *nowhere\n", f"{NEXT}:4", "x", "no anchor"),
    "python object tag": (
        BASE + "drain: !!python/object/apply:os.system [id]\n",
        f"{NEXT}:8",
        "drain",
        "tag !!python/object/apply:os.system is not supported",
    ),
    "binary tag": (BASE + "drain: {containers: [!!binary aGVsbG8=]}\n", f"{NEXT}:22", "", "!!binary"),
    "set tag": (BASE + "drain: !!set {a, b}\n", f"{NEXT}:8", "drain", "!!set"),
    "local tag": (BASE + "drain: !mine {}\n", f"{NEXT}:8", "drain", "!mine"),
    "a mapping as a key": (BASE + "? {a: 1}\n: x\n", f"{NEXT}:3", "(top level)", "a key must be plain text"),
    "duplicate key": (BASE + "mode: disk\n", f"{NEXT}:1", "mode", "duplicate key 'mode' (first on line 3)"),
    "two documents": (BASE + "---\nversion: 1\n", f"{NEXT}:1", "(top level)", "one YAML document"),
    "a 70-digit number": (BASE + f"x: {'1' * 70}\n", f"{NEXT}:4", "x", "too long"),
    "a non-printable character": (BASE + "x: a\x07b\n", f"{NEXT}:5", "(syntax)", "not allowed"),
    "too large": (BASE + "#" * MAX_STATE_BYTES + "\n", "1:1", "(file)", "larger than 64 KiB"),
    "not a mapping": ("- a\n- b\n", "1:1", "(top level)", "expected a mapping"),
    "only comments": ("# nothing here\n", "1:1", "(top level)", "the file is empty"),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_the_hostile_corpus_is_refused_with_a_position(case: str) -> None:
    text, position, path, fragment = CORPUS[case]
    started = time.process_time()
    with pytest.raises(SpecInvalid) as info:
        parse_state(text, "state.yaml", "/srv/app")
    elapsed = time.process_time() - started
    found = [str(p) for p in info.value.problems]
    assert any(
        line.startswith(f"state.yaml:{position}") and f": {path}" in line and fragment in line
        for line in found
    ), found
    assert all(len(line) < 1000 for line in found), "an error message must not echo a huge value"
    assert elapsed < 1.0, f"{case} took {elapsed:.2f} s"


def test_bytes_that_are_not_utf8_point_at_the_byte() -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_state_bytes(BASE.encode() + b"x: \xff\n", "state.yaml")
    assert [str(p) for p in info.value.problems] == [
        f"state.yaml:{NEXT}:4: (file): not UTF-8 text (byte 0xff)"
    ]


def test_a_byte_order_mark_is_allowed() -> None:
    assert parse_state_bytes(b"\xef\xbb\xbf" + BASE.encode()).stack == "demo"


def test_a_file_at_the_size_bound_parses_in_under_a_second() -> None:
    filler = "# " + "x" * 78 + "\n"
    text = BASE + "drain:\n  containers:\n"
    text += "".join(f"  - app{i}\n" for i in range(2000))
    text += filler * ((MAX_STATE_BYTES - len(text)) // len(filler))
    assert len(text) <= MAX_STATE_BYTES
    started = time.process_time()
    spec = parse_state(text)
    assert len(spec.drain.containers) == 2000
    assert time.process_time() - started < 1.0


def test_anchors_and_aliases_within_bounds_still_work() -> None:
    text = BASE + "backup:\n  retention: &keep {keep_last: 3}\n  stores:\n    gdrive: {retention: *keep}\n"
    spec = parse_state(text)
    assert spec.backup.stores.gdrive.retention == spec.backup.retention


def test_yaml_12_scalars_only() -> None:
    # YAML 1.1's "yes" is text in 1.2, and a strict boolean refuses it at its position (no silent True)
    with pytest.raises(SpecInvalid) as info:
        parse_state(BASE + "ram: {keep_disk_copy: yes}\n")
    found = [str(p) for p in info.value.problems]
    assert found == [f"state.yaml:{NEXT}:23: ram.keep_disk_copy: Input should be a valid boolean (got 'yes')"]
    assert parse_state(BASE + "ram: {keep_disk_copy: false}\n").ram.keep_disk_copy is False
    assert parse_state(BASE + "stack: '2001-12-14'\n".replace("stack", "state_dir")).state_dir == "2001-12-14"


def test_real_age_recipients_pass_the_pure_check() -> None:
    for _ in range(20):
        recipient = str(x25519.Identity.generate().to_public())
        assert recipient_problem(recipient) is None
        spec = parse_state(BASE + f"backup: {{encryption: {{recipients: [{recipient}]}}}}\n")
        assert spec.backup.encryption.recipients == [recipient]


def test_allowed_dump_options_are_accepted() -> None:
    options = "[--no-owner, -x, --no-comments, --lock-wait-timeout=30s, --extra-float-digits=3]"
    text = _replace("    disk_dir: ./data/pg", f"    disk_dir: ./data/pg\n    dump_options: {options}")
    assert "--lock-wait-timeout=30s" in parse_state(text).services.postgres.dump_options  # type: ignore[union-attr]


def _outcome(call: Any) -> StateSpec | SpecInvalid:
    try:
        result = call()
    except SpecInvalid as exc:  # the only failure allowed; anything else fails the test with its traceback
        for problem in exc.problems:
            assert problem.line >= 1 and problem.column >= 1
        return exc
    assert isinstance(result, StateSpec)
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_any_bytes_give_a_spec_or_spec_invalid(data: bytes) -> None:
    _outcome(lambda: parse_state_bytes(data, "state.yaml", "/srv/app"))


EXAMPLE = (ROOT / "state.yaml").read_text()
_YAML_BITS = st.sampled_from(
    [":", " ", "\n", "-", "[", "]", "{", "}", "&a", "*a", "!!", "!x", "<<", "'", '"', "#", "|", ">", "?", "---",
     "\t", "0", "9" * 30, "%", "true", "~", ".inf", "0x1F", "age1", "pg_", "/", "..", "\\", "\x00", "é"]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(EXAMPLE)), st.integers(0, 8), _YAML_BITS), max_size=6))
def test_mutations_of_the_example_give_a_spec_or_spec_invalid(edits: list[tuple[int, int, str]]) -> None:
    text = EXAMPLE
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut :]
    _outcome(lambda: parse_state(text, "state.yaml", "/srv/app"))


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.integers(min_value=10**12, max_value=10**30),
    st.sampled_from(
        [
            "0s",
            "5s",
            "1h",
            "0",
            "64MiB",
            "50%",
            "/",
            "/etc",
            ".",
            "..",
            "./data/backups",
            "pg_x",
            "age1x",
            "99999999999999999999d",
            "9" * 400 + "TiB",
            "9" * 400 + "%",
            "1e400",
            "-1",
            "0x10",
            "\x00",
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _leaf_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _leaf_paths(value, (*path, key))] or [path]
    if isinstance(node, list):
        return [p for index, value in enumerate(node) for p in _leaf_paths(value, (*path, index))] or [path]
    return [path]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_at_any_option_gives_a_spec_or_spec_invalid(data: st.DataObject) -> None:
    yaml = YAML()
    document = yaml.load(EXAMPLE)
    paths = _leaf_paths(document)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = document
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = data.draw(_VALUES)
    import io

    out = io.StringIO()
    yaml.dump(document, out)
    _outcome(lambda: parse_state(out.getvalue(), "state.yaml", "/srv/app"))
