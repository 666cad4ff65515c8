"""The application's side of MariaDB in tests and benchmarks: one ``mariadb`` client per statement over
TCP with the user's password (never in argv: ``MYSQL_PWD`` in the child's environment)."""

from __future__ import annotations

import os
import subprocess


def tcp_statement(
    port: int, user: str, database: str, password: str, sql: str
) -> subprocess.CompletedProcess[str]:
    """Run ``sql`` as an application would: acknowledged by the server when the client exits 0."""
    return subprocess.run(
        [
            "mariadb",
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            str(port),
            "-u",
            user,
            "--connect-timeout=3",
            database,
        ],
        input=sql,
        capture_output=True,
        text=True,
        env={**os.environ, "MYSQL_PWD": password},
        check=False,
    )
