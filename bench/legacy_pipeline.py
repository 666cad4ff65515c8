"""The legacy Loomio RAM-mode pipeline, as its scripts did it, for comparison in benchmarks.

backup:  plain pg_dump to a file, then the whole file encrypted with Fernet in memory.
restore: the whole file decrypted with Fernet in memory, then piped into psql.
"""

from __future__ import annotations

import os
import subprocess
import sys

from cryptography.fernet import Fernet

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from reconciler.backup.legacy import decrypt, derive_key


def main() -> None:
    action, password = sys.argv[1], os.environ["LEGACY_PASSWORD"]
    if action == "backup":
        psql_args, plain, out = sys.argv[2:-2], sys.argv[-2], sys.argv[-1]
        subprocess.run(["pg_dump", "-F", "p", "--no-owner", "--no-acl", "-f", plain, *psql_args], check=True)
        with open(plain, "rb") as handle:
            token = Fernet(derive_key(password)).encrypt(handle.read())
        with open(out, "wb") as handle:
            handle.write(token)
        os.unlink(plain)
    else:
        path, psql_args = sys.argv[2], sys.argv[3:]
        sql = decrypt(path, password)
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *psql_args],
            input=sql,
            check=True,
            stdout=subprocess.DEVNULL,
        )


if __name__ == "__main__":
    main()
