"""A realistic dataset for benchmarks: pgbench tables plus a table of varied text and jsonb.

pgbench's own filler columns are blank and compress ~100x, which would flatter any compressor; the
``documents`` table holds prose-like text drawn from a vocabulary, hex identifiers and jsonb, and
compresses about 2-4x like real application data. ``--mb`` sets the approximate size on disk.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

WORDS = [
    "proposal",
    "discussion",
    "group",
    "member",
    "vote",
    "agree",
    "disagree",
    "abstain",
    "block",
    "thread",
    "comment",
    "reply",
    "poll",
    "outcome",
    "meeting",
    "agenda",
    "budget",
    "community",
    "decision",
    "consensus",
    "timeline",
    "draft",
    "review",
    "update",
    "notify",
    "invite",
    "accept",
    "ünïcödé",
    "café",
    "naïve",
    "résumé",
    "über",
    "straße",
    "東京",
    "данные",
    "✓",
    "—",
    "…",
    "privacy",
    "policy",
    "garden",
    "kitchen",
    "volunteer",
    "event",
]


def generate(conninfo: dict[str, object], bindir: Path, megabytes: int) -> dict[str, int]:
    """Fill the database to roughly ``megabytes`` MB: 45% pgbench, 55% documents."""
    scale = max(1, int(megabytes * 0.45 / 15))  # pgbench: ~15 MB per scale unit
    env = {
        **os.environ,
        "PGHOST": str(conninfo["host"]),
        "PGPORT": str(conninfo["port"]),
        "PGUSER": "postgres",
    }
    subprocess.run(
        [str(bindir / "pgbench"), "-i", "-q", "-s", str(scale), str(conninfo["dbname"])],
        env=env,
        check=True,
        capture_output=True,
    )
    rows = max(1000, int(megabytes * 0.55 * 1024 * 1024 / 900))  # ~900 bytes per document row on disk
    words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    with psycopg.connect(**conninfo, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(
            "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, ref text, meta jsonb)"
        )
        batch = 50_000
        for start in range(1, rows + 1, batch):
            end = min(rows, start + batch - 1)
            conn.execute(
                f"""
                INSERT INTO documents
                SELECT g,
                       'Proposal #' || g || ' — ' || ({words})[1 + (g % {len(WORDS)})],
                       (SELECT string_agg(({words})[1 + floor(random() * {len(WORDS)})::int], ' ')
                          FROM generate_series(1, 90 + (g % 40)) WHERE g > 0),
                       md5(g::text || random()::text),
                       jsonb_build_object('votes', floor(random() * 1000)::int, 'open', g % 2 = 0,
                                          'tags', jsonb_build_array(({words})[1 + (g % 7)], ({words})[1 + (g % 11)]),
                                          'score', round(random()::numeric, 4))
                FROM generate_series({start}, {end}) g
                """
            )
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    return {"pgbench_scale": scale, "documents": rows, "database_bytes": int(size)}


def _words_sql() -> str:
    """One random word of ``WORDS`` (a new draw each time the expression is evaluated)."""
    quoted = ", ".join("'" + w + "'" for w in WORDS)
    return f"ELT(1 + FLOOR(RAND() * {len(WORDS)}), {quoted})"


def generate_mariadb(client: list[str], database: str, megabytes: int) -> dict[str, int]:
    """The same shape for MariaDB (InnoDB): ~45% ``orders`` (numbers, dates, short notes, two secondary
    indexes) and ~55% ``documents`` (prose from ``WORDS``, hex ids, JSON, indexed), filled with
    ``INSERT ... SELECT`` over the sequence engine in batches. ``client`` runs ``mariadb`` as root."""
    word = _words_sql()
    body = "CONCAT_WS(' ', " + ", ".join([word] * 130) + ")"
    orders = max(1000, int(megabytes * 0.45 * 2**20 / 150))  # ~150 bytes per order row with its indexes
    documents = max(1000, int(megabytes * 0.55 * 2**20 / 1150))  # ~1150 bytes per document row
    statements = [
        "SET NAMES utf8mb4;",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT NOT NULL, status VARCHAR(16) NOT NULL, "
        "total DECIMAL(12,2), created_at DATETIME NOT NULL, note VARCHAR(160), "
        "KEY customer (customer_id), KEY created (created_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;",
        "CREATE TABLE documents (id BIGINT PRIMARY KEY, title VARCHAR(200) NOT NULL, body TEXT, "
        "ref CHAR(32) NOT NULL, meta JSON, created_at DATETIME NOT NULL, KEY ref (ref), "
        "KEY title (title(40))) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;",
    ]
    batch = 50_000
    for start in range(1, orders + 1, batch):
        end = min(orders, start + batch - 1)
        statements.append(
            "INSERT INTO orders SELECT seq, FLOOR(RAND() * 200000), "
            "ELT(1 + seq % 5, 'open', 'paid', 'shipped', 'cancelled', 'refunded'), ROUND(RAND() * 5000, 2), "
            "'2024-01-01' + INTERVAL FLOOR(RAND() * 63072000) SECOND, "
            f"IF(seq % 3 = 0, NULL, CONCAT_WS(' ', {word}, {word}, {word}, {word}, seq)) "
            f"FROM seq_{start}_to_{end};"
        )
    for start in range(1, documents + 1, batch):
        end = min(documents, start + batch - 1)
        statements.append(
            f"INSERT INTO documents SELECT seq, CONCAT('Proposal #', seq, ' — ', {word}), "
            f"SUBSTRING_INDEX({body}, ' ', 90 + seq % 40), MD5(CONCAT(seq, RAND())), "
            "JSON_OBJECT('votes', FLOOR(RAND() * 1000), 'open', seq % 2 = 0, "
            f"'tags', JSON_ARRAY({word}, {word}), 'score', ROUND(RAND(), 4)), "
            "'2024-01-01' + INTERVAL FLOOR(RAND() * 63072000) SECOND "
            f"FROM seq_{start}_to_{end};"
        )
    statements.append("ANALYZE TABLE orders, documents;")
    loaded = subprocess.run(
        [*client, database], check=False, input="\n".join(statements), text=True, capture_output=True
    )
    if loaded.returncode != 0:
        raise RuntimeError(f"generating the MariaDB dataset failed: {loaded.stderr[-800:]}")
    size = subprocess.run(
        [
            *client,
            "-N",
            "-e",
            "SELECT SUM(data_length + index_length) FROM information_schema.tables "
            f"WHERE table_schema = '{database}'",
        ],
        text=True,
        check=True,
        capture_output=True,
    ).stdout.strip()
    return {"orders": orders, "documents": documents, "database_bytes": int(size)}
