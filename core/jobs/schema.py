"""The job database file: its tables, version, connections, and what may go into a row.

The schema is versioned with SQLite's `user_version`. A file made by a newer GroupTune is
refused with a clear error rather than misread; an older one is migrated here (`MIGRATIONS`).
Connections use WAL mode (set once, persistent), a 30 s busy timeout, and autocommit, so
transactions are explicit and short (`transaction`, which takes the write lock first).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import GroupTuneError

SCHEMA_VERSION = 2
STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
_JSON_FIELDS = ("argv", "depends_on", "resources")

_SCHEMA = """
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL,
    step             TEXT    NOT NULL,
    program          TEXT    NOT NULL DEFAULT 'grouptune', -- core.jobs.programs
    argv             TEXT    NOT NULL,              -- JSON list of str
    depends_on       TEXT    NOT NULL DEFAULT '[]', -- JSON list of job ids
    resources        TEXT    NOT NULL DEFAULT '{}', -- JSON {"cpus": n, "gpus": n, "slots": 0 for drivers}
    backend          TEXT    NOT NULL DEFAULT 'local',
    cwd              TEXT,
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    created          REAL    NOT NULL,
    started          REAL,
    finished         REAL,
    host             TEXT,
    pid              INTEGER,
    heartbeat        REAL,
    claimed_by       TEXT,
    progress         REAL,
    eta_s            REAL,
    message          TEXT,
    error            TEXT,
    exit_code        INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 1,
    log_path         TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs (state);
CREATE TABLE metrics (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts     REAL    NOT NULL,
    record TEXT    NOT NULL
);
CREATE INDEX metrics_job ON metrics (job_id, id);
"""


def connect(path: Path) -> sqlite3.Connection:
    """A new connection in autocommit mode. One per operation: never shared across threads."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode, much faster
    return conn


@contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """A write transaction holding the lock from its first statement (no upgrade deadlocks)."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def init_schema(path: Path) -> None:
    """Create the tables in a new file, or check the version of an existing one."""
    conn = connect(path)
    try:
        _use_wal(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    if version == SCHEMA_VERSION:
        return
    with transaction(path) as conn:  # re-read under the lock: another process may be creating it
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise GroupTuneError(
                f"{path} has job schema version {version}, newer than this GroupTune "
                f"understands ({SCHEMA_VERSION}); upgrade GroupTune to open it"
            )
        if version == 0:
            # one statement at a time: executescript() would COMMIT our transaction first
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
        for old in range(max(version, 1), SCHEMA_VERSION) if version else ():
            for statement in MIGRATIONS[old]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _use_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Switch a new file to WAL (persistent; not allowed in a transaction). The switch needs the
    file to itself and SQLite answers "database is locked" at once instead of waiting with the
    busy timeout, so several processes creating the database together retry it (6 processes
    opening a new jobs.db at the same instant failed 9 times in 120 without)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# version -> the statements that bring a database of that version to the next
MIGRATIONS = {
    # 1 -> 2: a job names a program (core.jobs.programs), no longer a module run by `python -m`
    1: [
        "ALTER TABLE jobs RENAME COLUMN module TO program",
        "UPDATE jobs SET program = 'grouptune' WHERE program = 'core.cli'",
        "UPDATE jobs SET program = program || ':main' WHERE program NOT LIKE '%:%' "
        "AND program != 'grouptune'",
    ],
}


def log_name(job_id: int, step: str) -> str:
    """The log file name of a job: `<id>-<step>.log`, the step made safe for a file name."""
    return f"{job_id}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', step).strip('-') or 'job'}.log"


def decode(row: sqlite3.Row) -> dict:
    """A job row as a dict, with its JSON columns decoded."""
    job = dict(row)
    for key in _JSON_FIELDS:
        job[key] = json.loads(job[key]) if job[key] is not None else None
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job


def check_argv(argv) -> list[str]:
    words = [argv] if isinstance(argv, str) else list(argv)
    if isinstance(argv, str) or not all(isinstance(a, str) for a in words):
        raise ValueError(f"argv must be a list of strings (one per word), got {argv!r}")
    return words


def check_ids(ids) -> list[int]:
    ids = list(ids)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"depends_on must be job ids (integers), got {ids!r}")
    return ids


def check_resources(resources: dict | None) -> dict:
    """{"cpus", "gpus", "slots": numbers >= 0, "custom": {Ray resource name: number >= 0}}."""
    resources = dict(resources or {})
    unknown = set(resources) - {"cpus", "gpus", "slots", "custom"}
    if unknown:
        raise ValueError(
            f"resources: unknown keys {sorted(unknown)}; use 'cpus', 'gpus', 'slots' and 'custom'"
        )
    custom = resources.pop("custom", None) or {}
    if not isinstance(custom, dict) or not all(isinstance(k, str) and k for k in custom):
        raise ValueError(f"resources['custom'] must map resource names to numbers, got {custom!r}")
    for key, value in [*resources.items(), *(("custom." + k, v) for k, v in custom.items())]:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"resources['{key}'] must be a number >= 0, got {value!r}")
    return resources | ({"custom": custom} if custom else {})


def json_default(obj):
    if hasattr(obj, "item"):  # numpy and torch scalars from training loops
        return obj.item()
    return str(obj)
