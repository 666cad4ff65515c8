"""databases/mariadb.scrub_client_error: a failing client's stderr keeps its code and the server's own
words, never the row data or statement text it echoes (values that hold quotes themselves included)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.backup.restore import SetRejected, classify_failure
from reconciler.databases.mariadb import ScrubbedFailure, scrub_client_error
from reconciler.errors import CommandFailed, HostFault
from reconciler.plan.faults import Stage

values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=0, max_size=60
)
MARKER = "ZQXMARKERQZX"
LOAD = Stage.LOAD


@given(values, values)
def test_row_data_in_an_echoed_statement_or_a_quoted_value_never_survives(before: str, after: str) -> None:
    value = before + MARKER + after
    stderr = (
        f"--------------\nINSERT INTO `t` VALUES\n(1,'{value}')\n--------------\n\n"
        f"ERROR 1062 (23000) at line 41: Duplicate entry '{value}' for key 'u'\n"
        f"ERROR 1064 (42000) at line 7: You have an error in your SQL syntax near '{value}' at line 1\n"
    )
    for tail in (stderr, stderr[-200:], stderr[len(stderr) // 2 :]):
        scrubbed = scrub_client_error(tail)
        assert MARKER not in scrubbed
        assert "ERROR 1064 (42000)" in scrubbed and len(scrubbed) <= 300


def test_the_servers_own_words_stay_and_decide_the_fault() -> None:
    full = "ERROR 3 (HY000) at line 5: Error writing file '/tmp/x' (Errcode: 28 \"No space left on device\")"
    assert scrub_client_error(full).endswith('(Errcode: 28 "No space left on device")')
    assert scrub_client_error("ERROR 1114 (HY000) at line 5: The table 'orders' is full").endswith("is full")
    argv = ["mariadb", "--no-defaults"]
    assert isinstance(classify_failure("s", ScrubbedFailure(CommandFailed(argv, 1, full)), LOAD), HostFault)
    refused = CommandFailed(argv, 1, f"ERROR 1062 (23000) at line 4: Duplicate entry '{MARKER}' for key 'u'")
    rejected = classify_failure("s", ScrubbedFailure(refused), LOAD)
    assert isinstance(rejected, SetRejected) and MARKER not in str(rejected) and "1062" in str(rejected)
