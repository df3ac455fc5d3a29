"""A full disk under the project store, simulated at the SQLite boundary (a small real file system is not
available to the tests): ``PRAGMA max_page_count`` set to the file's current size makes any write that needs
one more page fail with SQLITE_FULL, "database or disk is full", as a real ENOSPC on the file or its WAL does."""

from __future__ import annotations

import sqlite3
from typing import Callable

from core.project.store import ProjectStore, StoreWriteError

#: SQLite's largest max_page_count: the file may grow again ("space is back")
NO_LIMIT = 4294967294


def fill_disk(conn: sqlite3.Connection) -> None:
    """From now on this connection cannot grow the project file by a single page."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages:d}")


def free_space(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA max_page_count = {NO_LIMIT:d}")


def write_until_full(write: Callable[[int], object], limit: int = 20000) -> tuple[int, StoreWriteError]:
    """Call ``write(0)``, ``write(1)``, ... until the full disk refuses one (the free room left in the file's
    last pages is used first); returns how many writes were committed and the error of the one refused."""
    for i in range(limit):
        try:
            write(i)
        except StoreWriteError as err:
            return i, err
    raise AssertionError(f"{limit} writes and the full disk refused none: the simulation does not work")


def every_connection_full(monkeypatch) -> None:
    """Every connection a ProjectStore opens from now on (the CLI's, a worker's) finds the disk full."""
    opened = ProjectStore._conn

    def full(self):
        conn = opened(self)
        fill_disk(conn)
        return conn

    monkeypatch.setattr(ProjectStore, "_conn", full)
