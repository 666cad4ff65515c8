"""reconciler: keeps a self-hosted stack's PostgreSQL and Redis in RAM or disk mode, safely."""

__version__ = "0.1.0"
