"""One connection layer over SQLite (a file path, the default) and PostgreSQL (a `postgresql://` URL).

The SQL elsewhere is written once, with `?` placeholders; only what differs lives here: the placeholder
style, the id column type, and how a write transaction takes its lock. Every write runs under one lock
(SQLite's `BEGIN IMMEDIATE`, a transaction-scoped advisory lock on PostgreSQL), so choosing an item for
an annotator and storing a label are each atomic against every other writer. SQLite runs in WAL mode
with `synchronous=FULL`: a label whose commit has returned survives the process being killed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

_ADVISORY_LOCK_ID = 0x6A61786C  # any constant: all writers of one database take the same lock


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class Database:
    def __init__(self, url: str):
        self.url = url
        self.postgres = is_postgres(url)
        if self.postgres:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise ValueError("a PostgreSQL URL needs the psycopg package: pip install 'psycopg[binary]'") \
                    from None
        else:
            path = Path(url.removeprefix("sqlite:///")).expanduser()
            if not path.parent.is_dir():
                raise ValueError(f"{path}: its folder does not exist")
            self.path = str(path)
        self._local = threading.local()

    @property
    def id_column(self) -> str:
        return "BIGSERIAL PRIMARY KEY" if self.postgres else "INTEGER PRIMARY KEY"

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self):
        if self.postgres:
            import psycopg

            try:
                return psycopg.connect(self.url, autocommit=True)
            except psycopg.Error as e:
                raise ValueError(f"cannot connect to the PostgreSQL database: {str(e).strip()}") from None
        try:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise ValueError(f"{self.path}: cannot open it as a SQLite database ({e})") from None
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: tuple = ()):
        return self._connection().execute(self._sql(sql), params)

    def one(self, sql: str, params: tuple = ()):
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple = ()) -> list:
        return self.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def write(self):
        """A transaction holding the database's write lock; committed on exit, rolled back on an exception."""
        conn = self._connection()
        if self.postgres:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_ID,))
        else:
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
