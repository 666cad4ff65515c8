"""What rejects a backup set (plan/faults.py): the one policy, checked with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan.faults import (
    HOST_SIGNATURES,
    Stage,
    Verdict,
    host_signature,
    redis_keys_consistent,
    verdict,
)

CONTENT = [Stage.AUTHENTICATE, Stage.CHECKSUM, Stage.DECRYPT, Stage.COMPARE]
HOST = [Stage.SERVER, Stage.WRITE, Stage.FETCH]
text = st.text(max_size=200)


@given(st.sampled_from(CONTENT), text)
def test_content_faults_always_reject_whatever_the_message(stage: Stage, detail: str) -> None:
    assert verdict(stage, detail) is Verdict.REJECT


@given(st.sampled_from(HOST), text)
def test_host_faults_never_reject_whatever_the_message(stage: Stage, detail: str) -> None:
    assert verdict(stage, detail) is Verdict.RETRY


# The loader's own words around a signature: no newline (an echo line could start) and no double
# quote (quoted text is the dump's); quoted paths and identifiers may come before it.
words = st.text(st.characters(blacklist_characters='"\n\r', blacklist_categories=("Cs",)), max_size=100)
quoted = st.lists(words.map(lambda w: f'"{w}"'), max_size=2).map(" ".join)


@given(words, quoted, st.sampled_from(HOST_SIGNATURES), words, st.booleans(), text)
def test_a_loader_failing_for_a_host_reason_is_retried(
    before: str, path: str, signature: str, after: str, upper: bool, echoed: str
) -> None:
    detail = (
        f"pg_restore: error: {before}{path}: {signature.upper() if upper else signature}{after}"
        f"\nDETAIL:  {echoed}"
    )
    assert verdict(Stage.LOAD, detail) is Verdict.RETRY
    assert host_signature(detail) is not None


def test_a_dump_the_loader_refuses_rejects_the_set() -> None:
    for stderr in (
        "pg_restore: error: input file does not appear to be a valid archive",
        "pg_restore: error: unsupported version (1.16) in file header",
        'pg_restore: error: could not execute query: ERROR:  syntax error at or near "COPY"',
        "pg_restore: error: could not read from input file: end of file",
    ):
        assert verdict(Stage.LOAD, stderr) is Verdict.REJECT, stderr


def test_real_host_messages_of_the_loader_are_retried() -> None:
    for stderr in (
        'pg_restore: error: connection to server at "127.0.0.1", port 5432 failed: Connection refused',
        "pg_restore: error: could not execute query: ERROR:  could not extend file: No space left on device",
        "pg_restore: error: could not execute query: ERROR:  out of shared memory",
        "FATAL:  sorry, too many clients already: too many connections",
        "pg_restore: error: could not open input file: Too many open files",
    ):
        assert verdict(Stage.LOAD, stderr) is Verdict.RETRY, stderr


ECHO_PREFIXES = ["DETAIL:  ", "CONTEXT:  ", "HINT:  ", "LINE 1: ", "QUERY:  ", "Command was: "]


@given(words, st.sampled_from(ECHO_PREFIXES), text, st.sampled_from(HOST_SIGNATURES), text)
def test_the_dumps_own_text_echoed_back_is_never_a_host_fault(
    message: str, prefix: str, before: str, signature: str, after: str
) -> None:
    """A dump the server refuses, whose echoed row or statement happens to say "timed out", is still
    refused for its content: rejected (the next older set is tried), not retried forever."""
    detail = (
        f"pg_restore: error: COPY failed for table: ERROR:  {message}\n{prefix}{before}{signature}{after}"
    )
    if host_signature(f"pg_restore: error: COPY failed for table: ERROR:  {message}") is None:
        assert verdict(Stage.LOAD, detail) is Verdict.REJECT


@given(words, st.sampled_from(HOST_SIGNATURES), words)
def test_a_quoted_value_or_identifier_is_never_a_host_fault(before: str, signature: str, after: str) -> None:
    for detail in (
        f'pg_restore: error: COPY failed for table "t": ERROR:  invalid input syntax for type integer: '
        f'"{before}{signature}{after}"',
        f'pg_restore: error: COPY failed for table "{before}{signature}{after}": ERROR:  extra data after last expected column',
        f'pg_restore: error: COPY failed for table "t": ERROR:  invalid input value: "{before}{signature}\n{after}',
    ):
        assert verdict(Stage.LOAD, detail) is Verdict.REJECT, detail


def test_real_refusals_that_echo_host_words_reject_the_set() -> None:
    """What PostgreSQL 15 prints when a valid-looking dump's rows fail a constraint on restore."""
    for stderr in (
        'pg_restore: error: COPY failed for table "logs": ERROR:  new row for relation "logs" violates check '
        'constraint "logs_message_check"\nDETAIL:  Failing row contains (1, Request timed out).\n'
        'CONTEXT:  COPY logs, line 1: "1\tRequest timed out"\n',
        'pg_restore: error: COPY failed for table "events": ERROR:  duplicate key value violates unique '
        'constraint "events_pkey"\nDETAIL:  Key (msg)=(connection refused) already exists.\n'
        "CONTEXT:  COPY events, line 2\n",
        "pg_restore: error: could not execute query: ERROR:  function lower_ok(text) does not exist\n"
        "LINE 1: SELECT lower_ok('No space left on device')\n"
        "Command was: ALTER TABLE ONLY public.t ADD CONSTRAINT c CHECK (lower_ok('too many connections'));\n",
    ):
        assert verdict(Stage.LOAD, stderr) is Verdict.REJECT, stderr


def test_an_earlier_message_with_echo_lines_does_not_hide_a_later_host_fault() -> None:
    """Cutting at the first echo line must not reject a good set whose real failure comes after it."""
    stderr = (
        'pg_restore: warning: could not execute query: ERROR:  role "x" does not exist\n'
        "Command was: ALTER TABLE public.t OWNER TO x;\n"
        'pg_restore: error: could not execute query: ERROR:  could not extend file "base/1/2": '
        "No space left on device\nHINT:  Check free disk space.\n"
    )
    assert verdict(Stage.LOAD, stderr) is Verdict.RETRY


@pytest.mark.xfail(
    strict=True,
    reason="PostgreSQL does not escape double quotes inside the values it echoes: a value shaped "
    '`x" no space left on device "y` reads as the server\'s own words; only the SQLSTATE (not in '
    "pg_restore's stderr) or the server's log could tell them apart",
)
def test_a_value_with_its_own_quotes_around_a_host_phrase_is_not_a_host_fault() -> None:
    detail = (
        'pg_restore: error: COPY failed for table "t": ERROR:  invalid input syntax for type integer: '
        '"x" no space left on device "y"'
    )
    assert verdict(Stage.LOAD, detail) is Verdict.REJECT


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.data())
def test_only_keys_with_a_ttl_may_be_missing_after_a_restore(
    keys: int, expires: int, data: st.DataObject
) -> None:
    expires = min(expires, keys)
    restored = data.draw(st.integers(0, keys + 10))
    consistent = redis_keys_consistent(keys, expires, restored)
    assert consistent == (keys - expires <= restored <= keys)
    # every key with a TTL may have expired, and none: both are a good set
    assert redis_keys_consistent(keys, expires, keys - expires)
    assert redis_keys_consistent(keys, expires, keys)


@given(st.integers(0, 10_000), st.integers(0, 10_010))
def test_a_manifest_without_expires_only_bounds_the_count_from_above(keys: int, restored: int) -> None:
    assert redis_keys_consistent(keys, None, restored) == (restored <= keys)


def test_the_restore_layer_raises_what_the_policy_says() -> None:
    from reconciler.backup.restore import SetRejected, classify_failure
    from reconciler.errors import CommandFailed, HostFault

    refused = CommandFailed(
        ["/usr/lib/postgresql/15/bin/pg_restore"],
        1,
        "pg_restore: error: input file appears to be a text format dump. Please use psql.\n",
    )
    rejected = classify_failure("s", refused, Stage.LOAD)
    assert (
        isinstance(rejected, SetRejected)
        and "pg_restore failed: pg_restore: error: input file" in rejected.reason
    )
    full = CommandFailed(["pg_restore"], 1, "ERROR:  could not extend file: No space left on device")
    assert isinstance(classify_failure("s", full, Stage.LOAD), HostFault)
    # initdb or a server start failing is the host's, whatever it printed
    odd = CommandFailed(["initdb"], 1, "initdb: error: something unexpected")
    assert isinstance(classify_failure("s", odd), HostFault)
    assert isinstance(classify_failure("s", RuntimeError("port 5432 is taken")), HostFault)
    already = SetRejected("s", "sha256 does not match")
    assert classify_failure("s", already, Stage.SERVER) is already


def test_mariadb_errno_texts_in_its_own_words_are_host_faults() -> None:
    """MariaDB quotes an errno's text after its number in ``%M`` (``errno: 28 "No space left on
    device"``, ``Got error 28 "..." from storage engine``): the quoted text is dropped as possibly the
    dump's, so the number must be the evidence, as for ``Errcode: 28``. A full tmpfs while a set is
    loaded must never reject the set."""
    for stderr in (
        "ERROR 1005 (HY000) at line 22: Can't create table `shop__restoring`.`orders` "
        '(errno: 28 "No space left on device")\n',
        'ERROR 1030 (HY000) at line 57: Got error 28 "No space left on device" from storage engine InnoDB\n',
        'ERROR 1005 (HY000) at line 22: Can\'t create table `shop`.`t` (errno: 24 "Too many open files")\n',
        'ERROR 1030 (HY000) at line 9: Got error 12 "Cannot allocate memory" from storage engine Aria\n',
        'ERROR 1030 (HY000) at line 9: Got error 122 "Disk quota exceeded" from storage engine InnoDB\n',
    ):
        assert verdict(Stage.LOAD, stderr) is Verdict.RETRY, stderr
    # a content refusal with another errno stays a rejection
    refused = 'ERROR 1005 (HY000) at line 3: Can\'t create table `shop`.`t` (errno: 150 "Foreign key constraint is incorrectly formed")\n'
    assert verdict(Stage.LOAD, refused) is Verdict.REJECT


MARIADB_ECHO = "--------------\nINSERT INTO `logs` VALUES (1,'{value}'),(2,'ok')\n--------------\n\n"


@given(st.sampled_from(HOST_SIGNATURES), st.booleans())
def test_a_statement_or_value_the_mariadb_client_echoes_is_never_a_host_fault(
    signature: str, cut: bool
) -> None:
    """The ``mariadb`` client prints the failing statement (a dump's rows) between dashed lines before
    its error, and MariaDB quotes the offending value in single quotes. A dump whose log table says
    "connection refused" that the server refuses (a duplicate key) is a content fault: the set is
    rejected and an older one tried, never retried forever as a "host fault". ``cut``: the stderr
    tail kept (2000 characters) starts inside the echo."""
    value = f"request failed: {signature} (retrying)"
    stderr = MARIADB_ECHO.format(value=value) + (
        f"ERROR 1062 (23000) at line 41: Duplicate entry '{value}' for key 'PRIMARY'\n"
    )
    if cut:
        stderr = stderr[stderr.index("VALUES") :]
    assert verdict(Stage.LOAD, stderr) is Verdict.REJECT, stderr
    # the client's own refusal (no server code) of a statement it echoed
    client = MARIADB_ECHO.format(value=value) + "ERROR at line 41: Unknown command '\\q'.\n"
    assert verdict(Stage.LOAD, client) is Verdict.REJECT, client


@pytest.mark.parametrize(
    "own",
    [
        "ERROR 2013 (HY000) at line 41: Lost connection to server during query",
        "ERROR 1114 (HY000) at line 41: The table 'logs' is full",
        "ERROR 2002 (HY000): Can't connect to local server through socket '/run/mysqld/mariadb.sock' (111)",
    ],
)
def test_the_mariadb_clients_own_host_words_still_count_after_an_echo(own: str) -> None:
    assert verdict(Stage.LOAD, MARIADB_ECHO.format(value="fine") + own + "\n") is Verdict.RETRY


def test_a_postgresql_echo_shaped_like_a_mariadb_error_does_not_hide_its_host_fault() -> None:
    stderr = (
        "pg_restore: error: could not execute query: ERROR:  could not extend file: No space left on device\n"
        "DETAIL:  Failing row contains (1, note\nERROR 1062 (23000) at line 1: Duplicate entry).\n"
    )
    assert verdict(Stage.LOAD, stderr) is Verdict.RETRY
