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
