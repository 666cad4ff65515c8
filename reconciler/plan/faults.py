"""What rejects a backup set: the one policy, pure, used by verify and by every restore path.

Design decisions:
- A set is *rejected* (remembered per copy, never offered again, the next older set is tried) only for
  a fault of its own content: the manifest's MAC, a member's size or sha256, age decryption or the zstd
  stream, a dump the database engine refuses, or restored data that differs from the manifest. Those
  faults do not go away by retrying, and rolling back to an older set is the right answer.
- Everything else is a *host* fault: the scratch or target server does not initialise or start (too
  few file descriptors, /dev/shm or the tmpfs too small, a port taken by a race), a connection is
  refused, the disk is full, memory runs out. The set is innocent: rejecting it would roll the data
  back to an older set for a problem of the machine, and the daemon would never try it again. A host
  fault is an error to report and retry; the set stays a candidate.
- The engine's loader (``pg_restore``) fails for both kinds of reasons, so its own stderr decides:
  the host's signatures (errno texts, connection failures, resource exhaustion) make it a host fault;
  anything else it prints (not a valid archive, a syntax error, an unsupported version) means the dump
  itself is refused, a content fault. The signatures are errno texts from libc and PostgreSQL's own
  messages for resource exhaustion, matched case-insensitively.
- Only the loader's and the server's *own words* are evidence. PostgreSQL echoes the dump back in its
  errors: the failing row in ``DETAIL``, the COPY line in ``CONTEXT``, the statement after ``Command
  was:``/``LINE``/``QUERY``, a bad input value or an identifier in double quotes. A log table whose
  rows say "Request timed out" must not turn a dump the server refuses into a "host fault" retried
  forever (never rejected, never falling back to an older set, and blaming the machine). So the
  signatures are looked for in each message (from a ``pg_restore:`` line) before its first echo
  line, outside double-quoted text, and never after an unclosed quote. Not closed: a value that itself contains double quotes around a signature
  (``"x" no space left on device "y"``) still reads as the server's words; PostgreSQL does not
  escape quotes inside the values it echoes, so text alone cannot tell them apart
  (``tests/unit/test_faults.py``, strict xfail).
- When a host fault hides behind a content symptom (a pipe closed because the loader died), the
  loader's message is the evidence, never the symptom: callers classify the loader's exit, not the
  broken pipe.
"""

from __future__ import annotations

import re
from enum import Enum


class Stage(Enum):
    """Where, in checking or restoring a set, a failure happened."""

    AUTHENTICATE = "authenticate"  # the manifest is missing, malformed, unsigned, or its MAC fails
    CHECKSUM = "checksum"  # a member is missing, or its size or sha256 differs from the manifest
    DECRYPT = "decrypt"  # age or zstd refuse a member's bytes
    LOAD = "load"  # the engine's loader (pg_restore) exited non-zero; ``detail`` is its stderr
    COMPARE = "compare"  # the restored data differs from what the manifest recorded
    SERVER = "server"  # a (scratch or target) server did not initialise, start, or accept a connection
    WRITE = "write"  # writing restored data locally failed (a full tmpfs, no file descriptors)
    FETCH = "fetch"  # a copy could not be fetched from a remote store


class Verdict(Enum):
    REJECT = "reject"  # the set's content is at fault: remember it, try the next older set
    RETRY = "retry"  # the host is at fault: report, keep the set a candidate, try again later


_CONTENT_STAGES = frozenset({Stage.AUTHENTICATE, Stage.CHECKSUM, Stage.DECRYPT, Stage.COMPARE})

# Texts that mean "the machine", whoever prints them: libc's strerror for the errnos that are about
# resources, and PostgreSQL's own messages for a server that is gone, full, or out of memory.
HOST_SIGNATURES = (
    "no space left on device",
    "disk quota exceeded",
    "too many open files",
    "insufficient file descriptors",
    "cannot allocate memory",
    "out of memory",
    "out of shared memory",
    "could not resize shared memory",
    "could not fork",
    "resource temporarily unavailable",
    "address already in use",
    "connection refused",
    "could not connect to server",
    "connection to server",
    "server closed the connection unexpectedly",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "too many connections",
    "remaining connection slots are reserved",
    "input/output error",
    "read-only file system",
    "timed out",
    # MariaDB's client and server (a full datadir reads "(Errcode: 28 "No space left on device")")
    "can't connect to",
    "lost connection to server",
    "server has gone away",
    "is full",
    "out of resources",
    # MariaDB quotes the errno's text ("(Errcode: 28 "No space left on device")"): its number is its own
    "errcode: 28",  # ENOSPC
    "errcode: 24",  # EMFILE
    "errcode: 12",  # ENOMEM
    "errcode: 122",  # EDQUOT
    # ... and as ``%M`` in its own messages: "(errno: 28 "No space left on device")", "Got error 28 "..."
    # from storage engine": the quoted text is dropped (own_words), the number stays (a space after it)
    *(f"{prefix} {errno} " for prefix in ("errno:", "got error") for errno in (28, 24, 12, 122)),
)


# Lines in which PostgreSQL or pg_restore echo the dump's own text (the failing row, the COPY line, the
# statement): whatever they contain is data, never evidence about the machine.
_ECHO_LINES = ("detail:", "context:", "hint:", "line ", "query:", "statement:", "command was:", "where:")
_QUOTED = re.compile(r'"[^"]*"')
# The ``mariadb`` client's own lines (``ERROR 1062 (23000) at line 41: ...``): before them it echoes the
# failing statement (a dump's rows) between dashed lines, and the server quotes the offending value in
# single quotes, unescaped (a value may hold quotes itself): everything from the first opening quote to
# the last closing one is dropped. A quote inside a word (Can't) is an apostrophe, not a quote.
_MARIADB_ERROR = re.compile(r"^ERROR(?: \d+ \([0-9A-Z]{5}\)| at line \d+:)")  # the server's, the client's
_SINGLE_QUOTED = re.compile(r"(?<![A-Za-z0-9])'.*'(?![A-Za-z0-9])")


def _mariadb_own_words(detail: str) -> str | None:
    """The ``mariadb`` client's ERROR lines without the values they quote; None if it printed none."""
    lines = [line for line in detail.split("\n") if _MARIADB_ERROR.match(line)]
    if not lines or "pg_restore:" in detail:  # pg_restore's echo may hold such a line: not the client
        return None
    return "\n".join(
        _SINGLE_QUOTED.sub("<quoted>", _QUOTED.sub("<quoted>", line.split(" near '", 1)[0])) for line in lines
    )


def own_words(detail: str) -> str:
    """The part of a loader's message that is its own and the server's words, not the dump's text.

    Each message (from a line starting with ``pg_restore:``) counts up to its first echo line; its
    double-quoted text is dropped, and so is everything after a quote left open. The ``mariadb``
    client's output counts only by its ERROR lines, without their single-quoted values."""
    mariadb = _mariadb_own_words(detail)
    if mariadb is not None:
        return mariadb
    messages: list[list[str]] = [[]]
    for line in detail.split("\n"):  # PostgreSQL ends lines with \n only
        if line.startswith("pg_restore:"):
            messages.append([])
        messages[-1].append(line)
    words = []
    for lines in messages:
        kept: list[str] = []
        for line in lines:
            if line.strip().lower().startswith(_ECHO_LINES):
                break
            kept.append(line)
        text = _QUOTED.sub("<quoted>", "\n".join(kept))  # quoted identifiers, paths and input values
        text = text.split(" near '", 1)[0]  # MariaDB quotes the dump's text after "near '"
        words.append(text.split('"', 1)[0])  # an unclosed quote: the rest is the dump's
    return "\n".join(words)


def host_signature(detail: str) -> str | None:
    """The host-fault signature found in a tool's own words, if any (lower case)."""
    text = own_words(detail).lower()
    return next((signature for signature in HOST_SIGNATURES if signature in text), None)


def verdict(stage: Stage, detail: str = "") -> Verdict:
    """Reject the set only for a fault of its content; a host fault is retried."""
    if stage in _CONTENT_STAGES:
        return Verdict.REJECT
    if stage is Stage.LOAD:
        return Verdict.RETRY if host_signature(detail) else Verdict.REJECT
    return Verdict.RETRY


def redis_keys_consistent(recorded_keys: int, recorded_expires: int | None, restored_keys: int) -> bool:
    """Whether a restored Redis holds the keys its manifest recorded.

    Keys with a TTL may expire between the snapshot and the check (Redis drops expired keys when it
    loads an RDB), so up to ``recorded_expires`` keys may be missing; keys without a TTL may not, and
    no key appears from nowhere. A manifest that did not record ``expires`` (older sets) only bounds the
    count from above: the member's sha256, the manifest's MAC and Redis's own RDB checksum already
    vouch for the bytes, and a good set must not be rejected for keys that merely expired.
    """
    if restored_keys > recorded_keys:
        return False
    if recorded_expires is None:
        return True
    return restored_keys >= recorded_keys - recorded_expires
