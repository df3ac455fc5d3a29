"""Project store: everything a project knows, in one SQLite file (stdlib ``sqlite3``).

Why SQLite: a project must survive crashes, power cuts and being copied to a USB stick. One file (plus
its ``-wal``/``-shm`` side files while open) is easy to back up, and SQLite's transactions give us
all-or-nothing writes for free.

Durability settings (set on every connection):

* ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers, which is
  what the desktop app needs (the UI thread reads while a job thread writes predictions).
* ``synchronous=FULL``: every commit fsyncs the WAL. With WAL, ``NORMAL`` is already safe against an
  application crash (SIGKILL) but can lose the last commits on power loss or an OS crash. Labels are
  hours of expert work and commits are small and infrequent (a human clicking, or one transaction per
  import / prediction batch), so the extra fsync per commit is cheap and we take the stronger guarantee.
* ``foreign_keys=ON``: history rows can never point to images that do not exist.
* ``busy_timeout`` 30 s (``timeout=``): a second process (the CLI while the app is open) waits instead of
  failing.

Schema versioning: ``PRAGMA user_version`` holds the number of migrations applied. ``MIGRATIONS`` is an
ordered list of functions ``fn(conn)``; migration *i* (0-based) brings the file from version *i* to
*i + 1*. On open every pending migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the
``user_version`` bump, so a crash mid-migration leaves the file at the previous version. Before migrating
an existing file a copy is written next to it (``<file>.v<N>.bak``). A file with a newer version than
this code knows is refused (:class:`StoreVersionError`) rather than silently misread. Never edit a
migration that has shipped; append a new one.

Label history is append-only, never updated or deleted: every change is a row in ``label_events`` with
who, when, the label before and the label after. ``undo_label`` appends an ``undo`` row (``ref`` = the
edit it reverts, ``label`` = the label restored) and ``redo_label`` appends a ``redo`` row (``ref`` = the
edit it re-applies). So the audit trail also shows who undid what and when. The current label of an
image is simply the ``label`` of its newest event (view ``current_labels``). The undo/redo stacks are
recomputed by replaying an image's events (histories are short). A new edit after an undo clears the
redo stack, like every editor. Class renames append ``rename`` rows for the images that carried the old
name and a ``class_renames`` row; renames are not undo steps themselves, and undo/redo map the label
they restore through the renames made since that edit, so undoing an older edit restores the *new* name
of its class (never resurrects the old one).

Masks follow the same idea: ``mask_events`` rows ``add``/``remove`` per (image, PNG path); the current
masks are the paths whose last event is ``add``.

Threads: SQLite connections must not be shared between threads that use them concurrently, so the store
keeps one connection per thread (``threading.local``), created on first use. ``close()`` closes all of
them (call it after worker threads have stopped); a worker thread that ends early may call
``release_thread()``. Writes go through :meth:`ProjectStore.transaction`, which uses ``BEGIN IMMEDIATE``:
the write lock is taken *before* the transaction reads (e.g. undo reads the history, then appends), so
two writers never hit the read-then-upgrade deadlock that ``busy_timeout`` cannot resolve. Every public
write method is one transaction; multi-row writes (import, predictions, splits, rename) are atomic.
Times are Unix epoch seconds (float, UTC).
"""

from __future__ import annotations

import getpass
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from core.project.runs import TERMINAL_RUN_STATES, Run

log = logging.getLogger(__name__)

__all__ = [
    "ProjectStore", "StoreVersionError", "ProjectFileError", "StoreWriteError", "MIGRATIONS", "ImageRow", "LabelEvent",
    "MaskEvent", "Run", "Checkpoint", "Prediction", "PredictionRecord", "default_user", "MASK_SOURCES",
    "TERMINAL_RUN_STATES",
]

MASK_SOURCES = ("dataset", "app")
IMPORT_USER = "import"


def default_user() -> str:
    """The OS login name (who made an edit); ``"unknown"`` where the OS cannot tell."""
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


class StoreVersionError(RuntimeError):
    """The project file was written by a newer MedSSL Studio (its schema version is unknown here)."""


class ProjectFileError(ValueError):
    """The project file is not an SQLite database (damaged, or another file under its name)."""


class StoreWriteError(RuntimeError):
    """A write to the project file failed because the disk is full. The transaction was rolled back: the
    file holds exactly what it held before this write, and the store keeps working once there is space."""


def _full_disk_error(path: Path, exc: BaseException) -> StoreWriteError | None:
    """The clear error for SQLite's SQLITE_FULL ("database or disk is full"; also what a real ENOSPC on
    the file or its WAL becomes), or None for any other failure."""
    if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
        return StoreWriteError(f"{path}: not saved, the disk is full ({exc}). Nothing of this change was "
                               f"written; everything saved before is intact. Free some space and try again")
    return None


# -- schema -----------------------------------------------------------------------------------------
def _migration_1(conn: sqlite3.Connection) -> None:
    """Initial schema."""
    statements = [
        # key/value project settings; values are JSON
        """CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE images (
            id           INTEGER PRIMARY KEY,
            content_hash TEXT NOT NULL UNIQUE,
            rel_path     TEXT NOT NULL,
            abs_path     TEXT NOT NULL,
            width        INTEGER,
            height       INTEGER,
            is_color     INTEGER NOT NULL DEFAULT 0,
            case_id      TEXT,
            modality     TEXT,
            added_at     REAL NOT NULL,
            updated_at   REAL NOT NULL
        )""",
        "CREATE INDEX images_case ON images(case_id)",
        "CREATE INDEX images_rel_path ON images(rel_path)",
        """CREATE TABLE classes (
            id       INTEGER PRIMARY KEY,
            name     TEXT NOT NULL UNIQUE,
            position INTEGER NOT NULL,
            created  REAL NOT NULL
        )""",
        # every rename, so undo/redo can map a restored label to its class's current name
        """CREATE TABLE class_renames (
            id       INTEGER PRIMARY KEY,
            old_name TEXT NOT NULL,
            new_name TEXT NOT NULL,
            user     TEXT NOT NULL,
            time     REAL NOT NULL
        )""",
        """CREATE TABLE label_events (
            id         INTEGER PRIMARY KEY,
            image_id   INTEGER NOT NULL REFERENCES images(id),
            label      TEXT,
            prev_label TEXT,
            action     TEXT NOT NULL CHECK (action IN ('set', 'import', 'rename', 'undo', 'redo')),
            ref        INTEGER REFERENCES label_events(id),
            user       TEXT NOT NULL,
            time       REAL NOT NULL
        )""",
        "CREATE INDEX label_events_image ON label_events(image_id, id)",
        """CREATE VIEW current_labels AS
            SELECT e.image_id AS image_id, e.label AS label, e.user AS user, e.time AS time
            FROM label_events e
            JOIN (SELECT image_id, MAX(id) AS last_id FROM label_events GROUP BY image_id) m
              ON e.id = m.last_id""",
        """CREATE TABLE mask_events (
            id       INTEGER PRIMARY KEY,
            image_id INTEGER NOT NULL REFERENCES images(id),
            path     TEXT NOT NULL,
            source   TEXT NOT NULL CHECK (source IN ('dataset', 'app')),
            action   TEXT NOT NULL CHECK (action IN ('add', 'remove')),
            user     TEXT NOT NULL,
            time     REAL NOT NULL
        )""",
        "CREATE INDEX mask_events_image ON mask_events(image_id, id)",
        """CREATE TABLE split_sets (
            name    TEXT PRIMARY KEY,
            created REAL NOT NULL,
            params  TEXT NOT NULL DEFAULT '{}'
        )""",
        # `part` has no declared type on purpose: it keeps 'train'/'val'/'test' as text and fold numbers
        # as integers.
        """CREATE TABLE splits (
            name     TEXT NOT NULL REFERENCES split_sets(name) ON DELETE CASCADE ON UPDATE CASCADE,
            image_id INTEGER NOT NULL REFERENCES images(id),
            part     NOT NULL,
            PRIMARY KEY (name, image_id)
        )""",
        """CREATE TABLE runs (
            id       INTEGER PRIMARY KEY,
            kind     TEXT NOT NULL,
            name     TEXT NOT NULL,
            config   TEXT NOT NULL DEFAULT '{}',
            state    TEXT NOT NULL DEFAULT 'pending',
            created  REAL NOT NULL,
            finished REAL,
            metrics  TEXT NOT NULL DEFAULT '{}',
            run_dir  TEXT
        )""",
        """CREATE TABLE checkpoints (
            id      INTEGER PRIMARY KEY,
            run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            path    TEXT NOT NULL,
            epoch   INTEGER,
            metrics TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL
        )""",
        "CREATE INDEX checkpoints_run ON checkpoints(run_id)",
        """CREATE TABLE predictions (
            run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            image_id    INTEGER NOT NULL REFERENCES images(id),
            label       TEXT,
            probs       TEXT NOT NULL DEFAULT '{}',
            uncertainty TEXT NOT NULL DEFAULT '{}',
            time        REAL NOT NULL,
            PRIMARY KEY (run_id, image_id)
        )""",
    ]
    for sql in statements:  # not executescript(): that would COMMIT the migration transaction
        conn.execute(sql)


def _migration_2(conn: sqlite3.Connection) -> None:
    """Near-duplicate groups (the latest scan, replaced by the next) and the user's keep/exclude choice
    per image (kept across scans; nothing is ever deleted from disk)."""
    for sql in (
        """CREATE TABLE near_duplicate_scan (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            created REAL NOT NULL,
            params  TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE near_duplicates (
            group_no INTEGER NOT NULL,
            image_id INTEGER NOT NULL REFERENCES images(id),
            PRIMARY KEY (group_no, image_id)
        )""",
        """CREATE TABLE duplicate_choices (
            image_id INTEGER PRIMARY KEY REFERENCES images(id),
            choice   TEXT NOT NULL CHECK (choice IN ('keep', 'exclude')),
            user     TEXT NOT NULL,
            time     REAL NOT NULL
        )""",
    ):
        conn.execute(sql)


#: SQLite's application id of a project file, "MSSL": packaging/medssl-studio-mime.xml matches it at byte 68.
APPLICATION_ID = 0x4D53534C

#: Ordered schema migrations; ``len(MIGRATIONS)`` is the schema version this code writes.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2]


# -- rows ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRow:
    id: int
    content_hash: str
    rel_path: str
    abs_path: str
    width: int | None
    height: int | None
    is_color: bool
    case_id: str | None
    modality: str | None
    added_at: float
    updated_at: float


@dataclass(frozen=True)
class LabelEvent:
    """One row of an image's label history. ``label`` is the label *after* the event (None = cleared).

    ``action``: 'set' (a user edit), 'import' (from folder names/manifest), 'rename' (class renamed),
    'undo' (``ref`` = the edit reverted), 'redo' (``ref`` = the edit re-applied). ``undone`` is computed:
    True for an edit that is currently reverted by an undo.
    """
    id: int
    image_id: int
    label: str | None
    prev_label: str | None
    action: str
    ref: int | None
    user: str
    time: float
    undone: bool = False


@dataclass(frozen=True)
class MaskEvent:
    id: int
    image_id: int
    path: str
    source: str
    action: str
    user: str
    time: float


@dataclass(frozen=True)
class Checkpoint:
    id: int
    run_id: int
    path: str
    epoch: int | None
    metrics: dict
    created: float


@dataclass(frozen=True)
class Prediction:
    run_id: int
    image_id: int
    label: str | None
    probs: Any
    uncertainty: Any
    time: float


@dataclass(frozen=True)
class PredictionRecord:
    """One image's ensemble prediction, typed (what the desktop reads). Stored as ``label`` = predicted,
    ``probs`` = {"ensemble": {class: p}, "members": {member: {class: p}}}, ``uncertainty`` =
    {"entropy": nats, "disagreement": JS divergence in nats}; a flat {class: p} ``probs`` (one model,
    written through :meth:`ProjectStore.add_predictions`) reads as the ensemble's with no members."""
    image_id: int
    predicted: str | None
    probs: dict[str, float]
    members: dict[str, dict[str, float]]
    entropy: float | None
    disagreement: float | None

    @classmethod
    def from_row(cls, p: Prediction) -> "PredictionRecord":
        probs = p.probs if isinstance(p.probs, dict) else {}
        ens = probs["ensemble"] if isinstance(probs.get("ensemble"), dict) else probs
        members = probs["members"] if isinstance(probs.get("members"), dict) else {}
        unc = p.uncertainty if isinstance(p.uncertainty, dict) else {}
        return cls(p.image_id, p.label, {c: float(v) for c, v in ens.items() if isinstance(v, (int, float))},
                   {n: {c: float(v) for c, v in d.items()} for n, d in members.items()},
                   _opt_float(unc.get("entropy")), _opt_float(unc.get("disagreement")))


def _json(value: Any) -> str:
    return json.dumps(value if value is not None else {}, sort_keys=True)


def _unjson(text: str | None) -> Any:
    return json.loads(text) if text else {}


# -- the store ------------------------------------------------------------------------------------------
class ProjectStore:
    """One project's SQLite database. Safe to use from several threads (one connection per thread).

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0, create: bool = True):
        """``create=False`` opens an existing project only (a path typed by the user: a typo must not make
        an empty project)."""
        if str(path) == ":memory:":
            raise ValueError("ProjectStore needs a file: every thread opens its own connection to it")
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no project file there (mistyped path?); "
                                    f"`medssl scan FOLDER --store` creates one")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self._migrate(self._conn())
        except sqlite3.OperationalError as exc:      # full, locked, disk I/O: not a verdict on the file
            self.close()
            full = _full_disk_error(self.path, exc)
            if full is not None:
                raise full from exc
            raise
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ProjectFileError(f"{self.path}: not a MedSSL project file ({exc}); it was left as it is — "
                                   f"move it aside to start a new project there") from None

    # -- connections ------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"ProjectStore {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() may close every thread's connection; each
            # connection is still used by the one thread that created it.
            conn = sqlite3.connect(str(self.path), timeout=self._timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: WAL not available (journal_mode=%s); readers may block writers",
                            self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def release_thread(self) -> None:
        """Close the calling thread's connection (for worker threads that finish before the store)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._conns_lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()

    def close(self) -> None:
        """Close every thread's connection. Call after worker threads using the store have stopped."""
        if self._closed:
            return
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                if conn.in_transaction:
                    conn.rollback()
                conn.close()
            except sqlite3.Error:
                log.exception("closing %s", self.path)
        self._local = threading.local()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "ProjectStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside happen atomically (``BEGIN IMMEDIATE`` ... ``COMMIT``, rollback on error).

        Nested use joins the outer transaction, so callers can group several store writes
        (``with store.transaction(): store.set_label(...); store.add_mask(...)``). A full disk, inside
        or at the commit, is a :class:`StoreWriteError` raised here at the outermost level, after the
        rollback, so every write method reports it the same way.
        """
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.commit()
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except sqlite3.OperationalError as exc:
            full = _full_disk_error(self.path, exc)
            if full is not None:
                raise full from exc
            raise

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that must see the same committed state (a deferred read transaction)."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.commit()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    # -- schema -----------------------------------------------------------------------------------------
    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = MIGRATIONS  # looked up at call time so tests can monkeypatch the module list
        target = len(migrations)
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > target:
            raise StoreVersionError(
                f"{self.path} has schema version {current}, this MedSSL Studio knows up to {target}; "
                "open it with a newer version")
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")   # file managers tell our files apart
        if current == target:
            return
        if current > 0:
            backup = self.path.with_name(f"{self.path.name}.v{current}.bak")
            dst = sqlite3.connect(str(backup))
            try:
                conn.backup(dst)
            finally:
                dst.close()
            log.info("%s: backed up schema v%d to %s before migrating", self.path, current, backup)
        for version in range(current, target):
            conn.execute("BEGIN IMMEDIATE")
            try:
                # another process may have migrated while we waited for the lock
                if conn.execute("PRAGMA user_version").fetchone()[0] > version:
                    conn.commit()
                    continue
                migrations[version](conn)
                conn.execute(f"PRAGMA user_version = {version + 1:d}")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            log.info("%s: migrated schema to v%d", self.path, version + 1)

    @property
    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    def integrity_check(self) -> str:
        """SQLite's own consistency check: ``"ok"`` for a healthy file."""
        return "\n".join(r[0] for r in self._read("PRAGMA integrity_check"))

    # -- meta -------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable project setting (root folder, preferences...)."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self._read("SELECT key, value FROM meta")}

    @staticmethod
    def peek_meta(path: str | Path, key: str, default: Any = None) -> Any:
        """One project setting read without opening the store (read-only: no migration, no WAL files, so
        it works on a read-only medium); ``default`` when the file is not a project store."""
        try:
            conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return default
        return json.loads(row[0]) if row else default

    # -- images -----------------------------------------------------------------------------------------
    @staticmethod
    def _image(row: sqlite3.Row) -> ImageRow:
        return ImageRow(row["id"], row["content_hash"], row["rel_path"], row["abs_path"], row["width"],
                        row["height"], bool(row["is_color"]), row["case_id"], row["modality"],
                        row["added_at"], row["updated_at"])

    def images(self) -> list[ImageRow]:
        """All images, in the order they were first added."""
        return [self._image(r) for r in self._read("SELECT * FROM images ORDER BY id")]

    def image(self, image_id: int) -> ImageRow:
        rows = self._read("SELECT * FROM images WHERE id = ?", (image_id,))
        if not rows:
            raise KeyError(f"no image with id {image_id}")
        return self._image(rows[0])

    def image_id_for_hash(self, content_hash: str) -> int | None:
        rows = self._read("SELECT id FROM images WHERE content_hash = ?", (content_hash,))
        return rows[0][0] if rows else None

    def add_image(self, *, content_hash: str, rel_path: str, abs_path: str | Path, width: int | None = None,
                  height: int | None = None, is_color: bool = False, case_id: str | None = None,
                  modality: str | None = None) -> int:
        """Add one image (or return the id of the image with the same content hash, path updated)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT id FROM images WHERE content_hash = ?", (content_hash,)).fetchone()
            now = time.time()
            if row is not None:
                conn.execute("UPDATE images SET rel_path=?, abs_path=?, updated_at=? WHERE id=?",
                             (rel_path, str(abs_path), now, row[0]))
                return row[0]
            cur = conn.execute(
                "INSERT INTO images(content_hash, rel_path, abs_path, width, height, is_color, case_id, "
                "modality, added_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (content_hash, rel_path, str(abs_path), width, height, int(bool(is_color)), case_id,
                 modality, now, now))
            return cur.lastrowid

    def import_scan(self, scan_result: Any, user: str = IMPORT_USER) -> dict[str, int]:
        """Bring a folder scan (``core.data.library.ScanResult``) into the project, in one transaction.

        Images are matched by ``content_hash``, not by path, so a moved or renamed folder keeps its labels,
        masks and history: only the stored paths change (counted as ``moved``). Metadata changes (case id,
        modality, size) count as ``updated``.

        Labels from folder names / the manifest are written as ``import`` history rows by ``user`` only
        when the scanned label differs from the current label **and** from the label the previous import
        recorded. So re-importing the same dataset never reverts a correction made in the app, but a label
        that changed in the dataset itself is picked up. A scanned label of None never clears a label.

        Dataset masks (``source='dataset'``) are synced to the scan's ``mask_paths``; masks drawn in the app
        are left alone, and a dataset mask a user detached (an edit, erase or clear in the app) stays
        detached and a file the app wrote beside an image is not taken for a dataset mask: the user's edit
        wins over the data set's file for good; only a removal by an import (the file had gone) is undone
        when the file comes back. Returns counts: ``new``, ``moved``, ``updated``, ``unchanged``, ``duplicates``
        (same bytes twice in the scan; the first path wins), ``labels`` (history rows written),
        ``masks_added``, ``masks_removed``, ``missing`` (stored images not in this scan; kept).
        """
        counts = dict(new=0, moved=0, updated=0, unchanged=0, duplicates=0, labels=0, masks_added=0,
                      masks_removed=0, missing=0)
        with self.transaction() as conn:
            now = time.time()
            existing = {r["content_hash"]: r for r in conn.execute("SELECT * FROM images")}
            current = {r[0]: r[1] for r in conn.execute("SELECT image_id, label FROM current_labels")}
            last_import = {r[0]: r[1] for r in conn.execute(
                "SELECT e.image_id, e.label FROM label_events e JOIN (SELECT image_id, MAX(id) AS last_id "
                "FROM label_events WHERE action = 'import' GROUP BY image_id) m ON e.id = m.last_id")}
            dataset_masks = self._current_masks_by_image(conn, source="dataset")
            decided_by_user: dict[int, set[str]] = {}   # the app's own files, and dataset files a user detached
            for image_id, path in conn.execute(
                    "SELECT e.image_id, e.path FROM mask_events e JOIN (SELECT image_id, path, MAX(id) AS last_id "
                    "FROM mask_events GROUP BY image_id, path) m ON e.id = m.last_id "
                    "WHERE e.source = 'app' OR (e.action = 'remove' AND e.user != ?)", (user,)):
                decided_by_user.setdefault(image_id, set()).add(path)
            known_classes = {r[0] for r in conn.execute("SELECT name FROM classes")}
            for name in sorted({*scan_result.classes} | {r.label for r in scan_result.images if r.label is not None}):
                if name not in known_classes:
                    self._insert_class(conn, name)
                    known_classes.add(name)
            seen: set[str] = set()
            for rec in scan_result.images:
                h = rec.content_hash
                if h in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(h)
                values = (str(rec.rel_path), str(rec.path), _opt_int(rec.width), _opt_int(rec.height),
                          int(bool(rec.is_color)), rec.case_id, rec.modality)
                old = existing.get(h)
                if old is None:
                    image_id = conn.execute(
                        "INSERT INTO images(content_hash, rel_path, abs_path, width, height, is_color, "
                        "case_id, modality, added_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (h, *values, now, now)).lastrowid
                    counts["new"] += 1
                else:
                    image_id = old["id"]
                    stored = (old["rel_path"], old["abs_path"], old["width"], old["height"], old["is_color"],
                              old["case_id"], old["modality"])
                    if stored != values:
                        conn.execute("UPDATE images SET rel_path=?, abs_path=?, width=?, height=?, is_color=?, "
                                     "case_id=?, modality=?, updated_at=? WHERE id=?", (*values, now, image_id))
                        counts["moved" if stored[:2] != values[:2] else "updated"] += 1
                    else:
                        counts["unchanged"] += 1
                label = rec.label
                cur_label = current.get(image_id)
                if label is not None and label != cur_label and label != last_import.get(image_id):
                    conn.execute("INSERT INTO label_events(image_id, label, prev_label, action, ref, user, time) "
                                 "VALUES (?, ?, ?, 'import', NULL, ?, ?)", (image_id, label, cur_label, user, now))
                    counts["labels"] += 1
                wanted = {str(p) for p in rec.mask_paths}
                have = dataset_masks.get(image_id, set())
                for p in sorted(have - wanted):
                    self._insert_mask_event(conn, image_id, p, "dataset", "remove", user, now)
                    counts["masks_removed"] += 1
                for p in sorted(wanted - have - decided_by_user.get(image_id, set())):
                    self._insert_mask_event(conn, image_id, p, "dataset", "add", user, now)
                    counts["masks_added"] += 1
            counts["missing"] = len(set(existing) - seen)
            for key, value in (("root", str(scan_result.root)), ("last_import", now)):
                conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))
        return counts

    # -- classes ----------------------------------------------------------------------------------------
    def classes(self) -> list[str]:
        """Class names in display order."""
        return [r[0] for r in self._read("SELECT name FROM classes ORDER BY position, id")]

    @staticmethod
    def _insert_class(conn: sqlite3.Connection, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"invalid class name {name!r}")
        pos = conn.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM classes").fetchone()[0]
        conn.execute("INSERT INTO classes(name, position, created) VALUES (?, ?, ?)", (name, pos, time.time()))

    def add_class(self, name: str) -> bool:
        """Append a class at the end of the order. Returns False when it already exists."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM classes WHERE name = ?", (name,)).fetchone():
                return False
            self._insert_class(conn, name)
            return True

    def set_class_order(self, names: Sequence[str]) -> None:
        """Reorder classes; ``names`` must be exactly the current class names."""
        with self.transaction() as conn:
            have = {r[0] for r in conn.execute("SELECT name FROM classes")}
            if set(names) != have or len(names) != len(have):
                raise ValueError(f"class order must list exactly {sorted(have)}")
            for pos, name in enumerate(names):
                conn.execute("UPDATE classes SET position = ? WHERE name = ?", (pos, name))

    def rename_class(self, old: str, new: str, user: str | None = None) -> int:
        """Rename a class and relabel every image currently carrying it (one ``rename`` history row each).

        Refuses to rename onto an existing class (merging two classes should be an explicit relabel).
        Returns the number of images relabelled.
        """
        user = user or default_user()
        if not isinstance(new, str) or not new.strip():
            raise ValueError(f"invalid class name {new!r}")
        with self.transaction() as conn:
            if not conn.execute("SELECT 1 FROM classes WHERE name = ?", (old,)).fetchone():
                raise KeyError(f"no class {old!r}")
            if old == new:
                return 0
            if conn.execute("SELECT 1 FROM classes WHERE name = ?", (new,)).fetchone():
                raise ValueError(f"class {new!r} already exists")
            conn.execute("UPDATE classes SET name = ? WHERE name = ?", (new, old))
            now = time.time()
            conn.execute("INSERT INTO class_renames(old_name, new_name, user, time) VALUES (?, ?, ?, ?)",
                         (old, new, user, now))
            ids = [r[0] for r in conn.execute("SELECT image_id FROM current_labels WHERE label = ? "
                                              "ORDER BY image_id", (old,))]
            conn.executemany("INSERT INTO label_events(image_id, label, prev_label, action, ref, user, time) "
                             "VALUES (?, ?, ?, 'rename', NULL, ?, ?)", [(i, new, old, user, now) for i in ids])
            return len(ids)

    # -- labels -----------------------------------------------------------------------------------------
    def current_label(self, image_id: int) -> str | None:
        rows = self._read("SELECT label FROM label_events WHERE image_id = ? ORDER BY id DESC LIMIT 1",
                          (image_id,))
        return rows[0][0] if rows else None

    def labels(self) -> dict[int, str | None]:
        """Current label of every image (None = unlabelled), keyed by image id in id order."""
        return {r[0]: r[1] for r in self._read(
            "SELECT i.id, c.label FROM images i LEFT JOIN current_labels c ON c.image_id = i.id ORDER BY i.id")}

    def _append_label(self, conn: sqlite3.Connection, image_id: int, label: str | None, action: str,
                      ref: int | None, user: str, prev: str | None) -> int:
        if label is not None and not conn.execute("SELECT 1 FROM classes WHERE name = ?", (label,)).fetchone():
            self._insert_class(conn, label)
        return conn.execute("INSERT INTO label_events(image_id, label, prev_label, action, ref, user, time) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (image_id, label, prev, action, ref, user, time.time())).lastrowid

    def _check_image(self, conn: sqlite3.Connection, image_id: int) -> None:
        if not conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone():
            raise KeyError(f"no image with id {image_id}")

    def set_label(self, image_id: int, label: str | None, user: str | None = None) -> int | None:
        """Label an image (None clears it). An unknown class name is added to the class list.

        Returns the new history row id, or None when the label was already ``label`` (nothing written).
        """
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ValueError(f"invalid label {label!r}")
        user = user or default_user()
        with self.transaction() as conn:
            self._check_image(conn, image_id)
            row = conn.execute("SELECT label FROM label_events WHERE image_id = ? ORDER BY id DESC LIMIT 1",
                               (image_id,)).fetchone()
            prev = row[0] if row else None
            if prev == label:
                return None
            return self._append_label(conn, image_id, label, "set", None, user, prev)

    def set_labels(self, labels: Mapping[int, str | None], user: str | None = None) -> int:
        """Label many images at once, atomically (multi-select in the UI). Returns rows written."""
        user = user or default_user()
        n = 0
        with self.transaction():
            for image_id, label in labels.items():
                n += self.set_label(image_id, label, user) is not None
        return n

    @staticmethod
    def _replay(rows: Sequence[sqlite3.Row]) -> tuple[list[list], list[list], set[int]]:
        """Undo/redo stacks from an image's events. Entries are [edit_id, label_before, label_after, time]."""
        done: list[list] = []
        undone: list[list] = []
        reverted: set[int] = set()
        for r in rows:
            action = r["action"]
            if action in ("set", "import"):
                done.append([r["id"], r["prev_label"], r["label"], r["time"]])
                undone.clear()
            # 'rename' rows are not undo steps; undo/redo map names through class_renames instead
            elif action == "undo" and done:
                entry = done.pop()
                undone.append(entry)
                reverted.add(entry[0])
            elif action == "redo" and undone:
                entry = undone.pop()
                done.append(entry)
                reverted.discard(entry[0])
        return done, undone, reverted

    def _events(self, conn: sqlite3.Connection, image_id: int) -> list[sqlite3.Row]:
        return conn.execute("SELECT * FROM label_events WHERE image_id = ? ORDER BY id", (image_id,)).fetchall()

    def label_history(self, image_id: int) -> list[LabelEvent]:
        """Every label event of an image, oldest first (audit: who, when, before/after, undone)."""
        rows = self._events(self._conn(), image_id)
        _, _, reverted = self._replay(rows)
        return [LabelEvent(r["id"], r["image_id"], r["label"], r["prev_label"], r["action"], r["ref"],
                           r["user"], r["time"], r["id"] in reverted) for r in rows]

    def can_undo(self, image_id: int) -> bool:
        return bool(self._replay(self._events(self._conn(), image_id))[0])

    def can_redo(self, image_id: int) -> bool:
        return bool(self._replay(self._events(self._conn(), image_id))[1])

    def undo_label(self, image_id: int, user: str | None = None) -> int | None:
        """Revert the image's latest edit by appending an ``undo`` row. None when there is nothing to undo."""
        user = user or default_user()
        with self.transaction() as conn:
            rows = self._events(conn, image_id)
            done, _, _ = self._replay(rows)
            if not done:
                return None
            edit_id, before, _after, when = done[-1]
            before = self._renamed(conn, before, when)
            return self._append_label(conn, image_id, before, "undo", edit_id, user, rows[-1]["label"])

    def redo_label(self, image_id: int, user: str | None = None) -> int | None:
        """Re-apply the most recently undone edit (``redo`` row). None when there is nothing to redo."""
        user = user or default_user()
        with self.transaction() as conn:
            rows = self._events(conn, image_id)
            _, undone, _ = self._replay(rows)
            if not undone:
                return None
            edit_id, _before, after, when = undone[-1]
            after = self._renamed(conn, after, when)
            return self._append_label(conn, image_id, after, "redo", edit_id, user, rows[-1]["label"])

    @staticmethod
    def _renamed(conn: sqlite3.Connection, label: str | None, since: float) -> str | None:
        """``label`` as named now: follow the class renames made at or after ``since``."""
        if label is None:
            return None
        for old, new in conn.execute("SELECT old_name, new_name FROM class_renames WHERE time >= ? ORDER BY id",
                                     (since,)):
            if label == old:
                label = new
        return label

    def label_audit(self, *, user: str | None = None, since: float | None = None) -> list[LabelEvent]:
        """Label events across all images (optionally one user's, or since a time), oldest first.

        ``undone`` is not computed here (it needs a per-image replay); use :meth:`label_history`.
        """
        sql, params = "SELECT * FROM label_events WHERE 1=1", []
        if user is not None:
            sql += " AND user = ?"
            params.append(user)
        if since is not None:
            sql += " AND time >= ?"
            params.append(since)
        return [LabelEvent(r["id"], r["image_id"], r["label"], r["prev_label"], r["action"], r["ref"],
                           r["user"], r["time"]) for r in self._read(sql + " ORDER BY id", params)]

    # -- masks ------------------------------------------------------------------------------------------
    @staticmethod
    def _insert_mask_event(conn: sqlite3.Connection, image_id: int, path: str, source: str, action: str,
                           user: str, now: float) -> int:
        if source not in MASK_SOURCES:
            raise ValueError(f"mask source must be one of {MASK_SOURCES}, not {source!r}")
        return conn.execute("INSERT INTO mask_events(image_id, path, source, action, user, time) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (image_id, path, source, action, user, now)).lastrowid

    @staticmethod
    def _current_mask_rows(conn: sqlite3.Connection, image_id: int | None = None) -> list[sqlite3.Row]:
        sql = ("SELECT e.* FROM mask_events e JOIN (SELECT image_id, path, MAX(id) AS last_id FROM mask_events "
               "{where} GROUP BY image_id, path) m ON e.id = m.last_id WHERE e.action = 'add' ORDER BY e.id")
        if image_id is None:
            return conn.execute(sql.format(where="")).fetchall()
        return conn.execute(sql.format(where="WHERE image_id = ?"), (image_id,)).fetchall()

    def _current_masks_by_image(self, conn: sqlite3.Connection, source: str) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for r in self._current_mask_rows(conn):
            if r["source"] == source:
                out.setdefault(r["image_id"], set()).add(r["path"])
        return out

    @staticmethod
    def _mask(r: sqlite3.Row) -> MaskEvent:
        return MaskEvent(r["id"], r["image_id"], r["path"], r["source"], r["action"], r["user"], r["time"])

    def add_mask(self, image_id: int, path: str | Path, source: str = "app", user: str | None = None) -> int:
        """Attach a mask PNG side-car to an image (``source``: 'dataset' or 'app'). Returns the event id."""
        user = user or default_user()
        with self.transaction() as conn:
            self._check_image(conn, image_id)
            return self._insert_mask_event(conn, image_id, str(path), source, "add", user, time.time())

    def remove_mask(self, image_id: int, path: str | Path, user: str | None = None) -> int | None:
        """Detach a mask (history keeps it). Returns the event id, or None if it was not attached."""
        user = user or default_user()
        with self.transaction() as conn:
            for r in self._current_mask_rows(conn, image_id):
                if r["path"] == str(path):
                    return self._insert_mask_event(conn, image_id, str(path), r["source"], "remove", user,
                                                   time.time())
            return None

    def masks(self, image_id: int) -> list[MaskEvent]:
        """The masks currently attached to an image (their latest ``add`` event), oldest first."""
        return [self._mask(r) for r in self._current_mask_rows(self._conn(), image_id)]

    def mask_history(self, image_id: int) -> list[MaskEvent]:
        return [self._mask(r) for r in self._read("SELECT * FROM mask_events WHERE image_id = ? ORDER BY id",
                                                  (image_id,))]

    # -- splits -----------------------------------------------------------------------------------------
    def save_split(self, name: str, assignment: Mapping[int, str | int], params: Mapping | None = None) -> None:
        """Store (or atomically replace) a named split ``{image_id: part}``; part is 'train'/'val'/'test' or
        a fold number. ``params`` (seed, fractions...) is kept as JSON so the split can be explained."""
        with self.transaction() as conn:   # one transaction: the nested call joins it
            conn.execute("DELETE FROM split_sets WHERE name = ?", (name,))  # cascades to splits rows
            self.save_split_if_absent(name, assignment, params)

    def save_split_if_absent(self, name: str, assignment: Mapping[int, str | int],
                             params: Mapping | None = None) -> bool:
        """Save the split only when no split ``name`` exists (one transaction, so of two runs that make a
        first split at the same time exactly one saves it). True when this call saved it."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM split_sets WHERE name = ?", (name,)).fetchone():
                return False
            conn.execute("INSERT INTO split_sets(name, created, params) VALUES (?, ?, ?)",
                         (name, time.time(), _json(dict(params or {}))))
            conn.executemany("INSERT INTO splits(name, image_id, part) VALUES (?, ?, ?)",
                             [(name, int(i), _part(p)) for i, p in assignment.items()])
            return True

    def load_split(self, name: str) -> dict[int, str | int]:
        with self._snapshot() as conn:  # one snapshot for both reads
            if not conn.execute("SELECT 1 FROM split_sets WHERE name = ?", (name,)).fetchone():
                raise KeyError(f"no split {name!r}")
            rows = conn.execute("SELECT image_id, part FROM splits WHERE name = ? ORDER BY image_id",
                                (name,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def split_params(self, name: str) -> dict:
        rows = self._read("SELECT params FROM split_sets WHERE name = ?", (name,))
        if not rows:
            raise KeyError(f"no split {name!r}")
        return _unjson(rows[0][0])

    def list_splits(self) -> list[str]:
        return [r[0] for r in self._read("SELECT name FROM split_sets ORDER BY created, name")]

    def delete_split(self, name: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM split_sets WHERE name = ?", (name,)).rowcount > 0

    # -- near-duplicates ----------------------------------------------------------------------------------
    DUPLICATE_CHOICES = ("keep", "exclude")

    def save_duplicate_groups(self, groups: Sequence[Sequence[int]], params: Mapping | None = None) -> None:
        """Replace the stored near-duplicate groups (image ids) with a new scan's; choices are kept."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM near_duplicates")
            conn.execute("INSERT OR REPLACE INTO near_duplicate_scan(id, created, params) VALUES (1, ?, ?)",
                         (time.time(), _json(dict(params or {}))))
            conn.executemany("INSERT INTO near_duplicates(group_no, image_id) VALUES (?, ?)",
                             [(g, int(i)) for g, ids in enumerate(groups) for i in ids])

    def duplicate_groups(self) -> list[list[int]]:
        """The stored groups (image ids, ascending), in the order they were saved."""
        groups: dict[int, list[int]] = {}
        for r in self._read("SELECT group_no, image_id FROM near_duplicates ORDER BY group_no, image_id"):
            groups.setdefault(r[0], []).append(r[1])
        return list(groups.values())

    def duplicate_scan_params(self) -> dict | None:
        rows = self._read("SELECT params FROM near_duplicate_scan WHERE id = 1")
        return _unjson(rows[0][0]) if rows else None

    def set_duplicate_choice(self, image_id: int, choice: str | None, user: str | None = None) -> None:
        """Keep or exclude an image from training and evaluation (None: no choice); the file stays on disk."""
        if choice is not None and choice not in self.DUPLICATE_CHOICES:
            raise ValueError(f"choice must be one of {self.DUPLICATE_CHOICES} or None, got {choice!r}")
        with self.transaction() as conn:
            self._check_image(conn, image_id)
            if choice is None:
                conn.execute("DELETE FROM duplicate_choices WHERE image_id = ?", (image_id,))
            else:
                conn.execute("INSERT OR REPLACE INTO duplicate_choices(image_id, choice, user, time) "
                             "VALUES (?, ?, ?, ?)", (image_id, choice, user or default_user(), time.time()))

    def duplicate_choices(self) -> dict[int, str]:
        return {r[0]: r[1] for r in self._read("SELECT image_id, choice FROM duplicate_choices")}

    def excluded_image_ids(self) -> set[int]:
        """Images the user excluded (as near-duplicates): left out of fine-tuning and studies."""
        return {r[0] for r in self._read("SELECT image_id FROM duplicate_choices WHERE choice = 'exclude'")}

    # -- runs / checkpoints / predictions -------------------------------------------------------------------
    #: a run's error is kept in its metrics JSON under this key (where projects have always had it)
    _ERROR_KEY = "error"

    @staticmethod
    def _run(r: sqlite3.Row) -> Run:
        metrics = _unjson(r["metrics"])
        error = str(metrics.pop(ProjectStore._ERROR_KEY, "") or "")
        return Run(r["id"], r["kind"], r["name"], _unjson(r["config"]), r["state"], r["created"], r["finished"],
                   metrics, r["run_dir"], error)

    def add_run(self, kind: str, name: str, config: Mapping | None = None, *, run_dir: str | Path | None = None,
                state: str = "pending") -> int:
        """Record a pretraining / fine-tuning / prediction run. Returns its id (see core.project.runs)."""
        with self.transaction() as conn:
            return conn.execute(
                "INSERT INTO runs(kind, name, config, state, created, run_dir) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, name, _json(dict(config or {})), state, time.time(),
                 str(run_dir) if run_dir is not None else None)).lastrowid

    def update_run(self, run_id: int, *, state: str | None = None, metrics: Mapping | None = None,
                   config: Mapping | None = None, run_dir: str | Path | None = None,
                   finished: float | None = None, error: str | None = None) -> None:
        """Change a run's fields (``metrics``/``config`` replace the stored dicts; ``error`` "" clears it, None
        keeps it or takes an "error" key of ``metrics``, as projects stored it before). Moving to a terminal
        state ('finished', 'failed', 'cancelled') stamps ``finished`` with now unless given."""
        sets, params = [], []
        if state is not None:
            sets.append("state = ?")
            params.append(state)
            if finished is None and state in TERMINAL_RUN_STATES:
                finished = time.time()
        if config is not None:
            sets.append("config = ?")
            params.append(_json(dict(config)))
        if run_dir is not None:
            sets.append("run_dir = ?")
            params.append(str(run_dir))
        if finished is not None:
            sets.append("finished = ?")
            params.append(finished)
        with self.transaction() as conn:
            row = conn.execute("SELECT metrics FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run with id {run_id}")
            if metrics is not None or error is not None:
                stored = _unjson(row["metrics"])
                kept_error = stored.pop(self._ERROR_KEY, "")
                new = dict(metrics) if metrics is not None else stored
                given = new.pop(self._ERROR_KEY, None)
                if error is None:
                    error = given if given is not None else kept_error
                if error:
                    new[self._ERROR_KEY] = error
                sets.append("metrics = ?")
                params.append(_json(new))
            if sets:
                conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, run_id))

    def get_run(self, run_id: int) -> Run:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise KeyError(f"no run with id {run_id}")
        return self._run(rows[0])

    def list_runs(self, kind: str | None = None) -> list[Run]:
        if kind is None:
            rows = self._read("SELECT * FROM runs ORDER BY id")
        else:
            rows = self._read("SELECT * FROM runs WHERE kind = ? ORDER BY id", (kind,))
        return [self._run(r) for r in rows]

    def delete_run(self, run_id: int) -> bool:
        """Forget a run with its checkpoints and predictions (files on disk are not touched)."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount > 0

    def add_checkpoint(self, run_id: int, path: str | Path, epoch: int | None = None,
                       metrics: Mapping | None = None) -> int:
        with self.transaction() as conn:
            return conn.execute("INSERT INTO checkpoints(run_id, path, epoch, metrics, created) VALUES (?,?,?,?,?)",
                                (run_id, str(path), epoch, _json(dict(metrics or {})), time.time())).lastrowid

    def checkpoints(self, run_id: int) -> list[Checkpoint]:
        return [Checkpoint(r["id"], r["run_id"], r["path"], r["epoch"], _unjson(r["metrics"]), r["created"])
                for r in self._read("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY id", (run_id,))]

    def add_predictions(self, run_id: int, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> int:
        """Store a run's predictions atomically: all rows or none. Each row is a mapping with ``image_id``,
        ``label``, ``probs``, ``uncertainty`` (JSON-serialisable) or a tuple in that order. A prediction
        for an (run, image) pair already stored is replaced. Returns the number of rows written."""
        now = time.time()
        values = []
        for row in rows:
            if isinstance(row, Mapping):
                image_id, label = row["image_id"], row.get("label")
                probs, unc = row.get("probs"), row.get("uncertainty")
            else:
                image_id, label, probs, unc = (tuple(row) + (None, None, None))[:4]
            values.append((run_id, int(image_id), label, json.dumps(probs if probs is not None else {}),
                           json.dumps(unc if unc is not None else {}), now))
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO predictions(run_id, image_id, label, probs, uncertainty, time) "
                             "VALUES (?, ?, ?, ?, ?, ?)", values)
        return len(values)

    def predictions(self, run_id: int) -> list[Prediction]:
        return [Prediction(r["run_id"], r["image_id"], r["label"], _unjson(r["probs"]), _unjson(r["uncertainty"]),
                           r["time"])
                for r in self._read("SELECT * FROM predictions WHERE run_id = ? ORDER BY image_id", (run_id,))]

    def has_predictions(self, run_id: int) -> bool:
        return bool(self._read("SELECT 1 FROM predictions WHERE run_id = ? LIMIT 1", (run_id,)))

    def add_prediction_arrays(self, run_id: int, image_ids: Sequence[int], classes: Sequence[str],
                              members: Sequence[str], probs_nc, member_probs_mnc, entropy_n,
                              disagreement_n) -> int:
        """Store a batch of ensemble predictions straight from the predictor's arrays (one transaction):
        ensemble probabilities [N, C], member probabilities [M, N, C], entropy and member disagreement [N]
        (nats), in the layout :class:`PredictionRecord` reads. Returns the number of rows written."""
        import numpy as np

        n, classes, members = len(image_ids), list(classes), list(members)
        if n == 0:
            return 0
        p, mp = np.asarray(probs_nc, np.float64), np.asarray(member_probs_mnc, np.float64)
        ent, dis = np.asarray(entropy_n, np.float64), np.asarray(disagreement_n, np.float64)
        for name, arr, shape in (("probs_nc", p, (n, len(classes))), ("member_probs_mnc", mp, (len(members), n, len(classes))),
                                 ("entropy_n", ent, (n,)), ("disagreement_n", dis, (n,))):
            if arr.shape != shape:
                raise ValueError(f"add_prediction_arrays: {name} has shape {arr.shape}, expected {shape}")
        rows = [(int(image_id), classes[int(p[i].argmax())],
                 {"ensemble": dict(zip(classes, p[i].tolist())),
                  "members": {m: dict(zip(classes, mp[j, i].tolist())) for j, m in enumerate(members)}},
                 {"entropy": float(ent[i]), "disagreement": float(dis[i])})
                for i, image_id in enumerate(image_ids)]
        return self.add_predictions(run_id, rows)

    def prediction_records(self, run_id: int) -> list[PredictionRecord]:
        return [PredictionRecord.from_row(p) for p in self.predictions(run_id)]


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _part(value: Any) -> str | int:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    try:  # numpy integers
        return int(value)
    except (TypeError, ValueError):
        return str(value)
