"""Versioned schema migrations: migrations/NNNN_name.sql, applied in order, recorded once.

Every statement is written idempotently (IF NOT EXISTS), so a process that died between a
statement and its record simply runs the file again on the next start.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .backends import Backend

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self) -> list[str]:
        return split_statements(self.path.read_text())


def split_statements(text: str) -> list[str]:
    """Our own files only: drop `--` comment lines, split on `;` at the end of a line."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}")
    return found


def applied_versions(backend: Backend) -> set[int]:
    backend.command(_LEDGER)
    return {int(r["version"]) for r in backend.query("SELECT DISTINCT version FROM schema_migrations")}


def migrate(backend: Backend, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply the pending migrations in version order; returns the versions applied now."""
    done = applied_versions(backend)
    applied = []
    for mig in discover(directory):
        if mig.version in done:
            continue
        for stmt in mig.statements():
            backend.command(stmt)
        backend.insert("schema_migrations", [{"version": mig.version, "name": mig.name}],
                       ["version", "name"], dedup_token=None)
        log.info("clickhouse migration %04d_%s applied", mig.version, mig.name)
        applied.append(mig.version)
    return applied
