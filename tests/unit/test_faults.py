"""What rejects a backup set (plan/faults.py): the one policy, checked with hypothesis."""

from __future__ import annotations

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


@given(text, st.sampled_from(HOST_SIGNATURES), text, st.booleans())
def test_a_loader_failing_for_a_host_reason_is_retried(
    before: str, signature: str, after: str, upper: bool
) -> None:
    detail = before + (signature.upper() if upper else signature) + after
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
