"""ProjectStore: labels with undo/redo/audit, classes, import by content hash, migrations, atomic writes,
crash safety under SIGKILL, and concurrent reader/writer threads."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import core.project.store as store_mod
from core.project.store import ProjectStore, StoreVersionError

REPO_ROOT = Path(__file__).resolve().parents[2]


# Duck-typed stand-ins for core.data.library.ImageRecord / ScanResult (see docs/ARCHITECTURE.md).
@dataclass
class FakeRecord:
    path: Path
    rel_path: str
    content_hash: str
    label: str | None = None
    case_id: str | None = None
    modality: str | None = None
    mask_paths: list = field(default_factory=list)
    width: int = 64
    height: int = 48
    is_color: bool = False


@dataclass
class FakeScan:
    root: Path
    images: list
    errors: list = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.images if r.label is not None})


def make_scan(root: Path, n: int = 6, *, folder_prefix: str = "") -> FakeScan:
    recs = []
    for i in range(n):
        label = ["benign", "malignant", "normal"][i % 3]
        rel = f"{folder_prefix}{label}/img{i}.png"
        mask = root / f"{folder_prefix}{label}/img{i}_mask.png"
        recs.append(FakeRecord(root / rel, rel, f"hash{i:04d}", label, f"case{i // 2}", "US", [mask]))
    return FakeScan(root, recs)


@pytest.fixture
def store(tmp_path):
    s = ProjectStore(tmp_path / "project.db")
    yield s
    s.close()


def add_images(store: ProjectStore, n: int) -> list[int]:
    return [store.add_image(content_hash=f"h{i}", rel_path=f"x/{i}.png", abs_path=f"/data/x/{i}.png")
            for i in range(n)]


# -- basics -------------------------------------------------------------------------------------------
def test_pragmas_and_schema(store):
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version == len(store_mod.MIGRATIONS) >= 1
    assert store.integrity_check() == "ok"


def test_close_is_clean(tmp_path):
    path = tmp_path / "p.db"
    with ProjectStore(path) as s:
        add_images(s, 2)
        s.set_label(1, "a", user="u")
    assert s.closed
    with pytest.raises(sqlite3.ProgrammingError):
        s.labels()
    assert not Path(str(path) + "-wal").exists()  # last connection closed -> WAL checkpointed away
    with ProjectStore(path) as s2:
        assert s2.labels() == {1: "a", 2: None}


def test_memory_path_refused():
    with pytest.raises(ValueError):
        ProjectStore(":memory:")


def test_meta_roundtrip(store):
    store.set_meta("root", "/data/busi")
    store.set_meta("prefs", {"zoom": 2})
    assert store.get_meta("root") == "/data/busi"
    assert store.meta() == {"root": "/data/busi", "prefs": {"zoom": 2}}
    assert store.get_meta("missing", 5) == 5


# -- labels -------------------------------------------------------------------------------------------
def test_set_undo_redo_history_audit(store):
    (img,) = add_images(store, 1)
    assert store.current_label(img) is None
    t0 = time.time()
    e1 = store.set_label(img, "benign", user="alice")
    e2 = store.set_label(img, "malignant", user="bob")
    assert store.set_label(img, "malignant", user="bob") is None  # no-op writes nothing
    assert store.current_label(img) == "malignant"

    assert store.undo_label(img, user="carol") is not None
    assert store.current_label(img) == "benign"
    assert store.undo_label(img, user="carol") is not None
    assert store.current_label(img) is None
    assert store.undo_label(img) is None  # nothing left
    assert not store.can_undo(img) and store.can_redo(img)

    assert store.redo_label(img, user="dave") is not None
    assert store.current_label(img) == "benign"

    hist = store.label_history(img)
    assert [(h.action, h.label, h.user) for h in hist] == [
        ("set", "benign", "alice"), ("set", "malignant", "bob"),
        ("undo", "benign", "carol"), ("undo", None, "carol"), ("redo", "benign", "dave")]
    assert [h.ref for h in hist[2:]] == [e2, e1, e1]
    assert [h.prev_label for h in hist] == [None, "benign", "malignant", "benign", None]
    by_id = {h.id: h for h in hist}
    assert by_id[e2].undone and not by_id[e1].undone  # e1 was redone, e2 still reverted
    assert all(t0 - 1 <= h.time <= time.time() + 1 for h in hist)

    # a new edit after undo clears the redo stack; history is kept, never deleted
    store.set_label(img, "normal", user="erin")
    assert not store.can_redo(img)
    assert len(store.label_history(img)) == 6
    assert [e.user for e in store.label_audit(user="carol")] == ["carol", "carol"]
    assert store.labels() == {img: "normal"}


def test_default_user_and_unknown_image(store):
    (img,) = add_images(store, 1)
    store.set_label(img, "a")
    assert store.label_history(img)[0].user == store_mod.default_user()
    with pytest.raises(KeyError):
        store.set_label(999, "a")
    with pytest.raises(ValueError):
        store.set_label(img, "  ")


def test_clear_label_and_labels_map(store):
    ids = add_images(store, 3)
    store.set_label(ids[0], "a", user="u")
    store.set_label(ids[1], "b", user="u")
    store.set_label(ids[1], None, user="u")
    assert store.labels() == {ids[0]: "a", ids[1]: None, ids[2]: None}
    assert store.label_history(ids[1])[-1].label is None


def test_classes_and_rename(store):
    ids = add_images(store, 4)
    assert store.add_class("benign") and not store.add_class("benign")
    store.set_label(ids[0], "benign", user="u")
    store.set_label(ids[1], "benign", user="u")
    store.set_label(ids[2], "malignant", user="u")  # unknown class is added
    assert store.classes() == ["benign", "malignant"]
    store.set_label(ids[3], "benign", user="u")
    store.set_label(ids[3], "malignant", user="u")  # ids[3] has 'benign' on its undo stack

    assert store.rename_class("benign", "benign_tumour", user="admin") == 2
    assert store.classes() == ["benign_tumour", "malignant"]
    labels = store.labels()
    assert labels[ids[0]] == labels[ids[1]] == "benign_tumour" and labels[ids[2]] == "malignant"
    last = store.label_history(ids[0])[-1]
    assert (last.action, last.prev_label, last.label, last.user) == ("rename", "benign", "benign_tumour", "admin")

    # undo after a rename restores the class under its new name, never resurrects the old name
    store.undo_label(ids[3], user="u")
    assert store.current_label(ids[3]) == "benign_tumour"
    store.undo_label(ids[0], user="u")
    assert store.current_label(ids[0]) is None
    store.redo_label(ids[0], user="u")
    assert store.current_label(ids[0]) == "benign_tumour"
    assert "benign" not in store.classes()

    with pytest.raises(ValueError):
        store.rename_class("malignant", "benign_tumour")
    with pytest.raises(KeyError):
        store.rename_class("nope", "x")
    store.set_class_order(["malignant", "benign_tumour"])
    assert store.classes() == ["malignant", "benign_tumour"]


# -- import -------------------------------------------------------------------------------------------
def test_import_and_moved_folder_keeps_labels(store, tmp_path):
    scan1 = make_scan(tmp_path / "data")
    c1 = store.import_scan(scan1)
    assert c1["new"] == 6 and c1["labels"] == 6 and c1["masks_added"] == 6 and c1["moved"] == 0
    assert store.get_meta("root") == str(tmp_path / "data")
    assert store.classes() == ["benign", "malignant", "normal"]
    imgs = {im.content_hash: im for im in store.images()}
    first = imgs["hash0000"]
    assert (first.case_id, first.modality, first.width, first.height) == ("case0", "US", 64, 48)
    assert store.label_history(first.id)[0].user == "import"

    # the user corrects a label in the app
    store.set_label(first.id, "normal", user="alice")

    # same bytes, new folder layout: labels, history and ids are kept, paths updated
    scan2 = make_scan(tmp_path / "moved", folder_prefix="sub/")
    c2 = store.import_scan(scan2)
    assert c2["new"] == 0 and c2["moved"] == 6 and c2["labels"] == 0
    assert c2["masks_added"] == 6 and c2["masks_removed"] == 6
    moved = store.image(first.id)
    assert moved.rel_path == "sub/benign/img0.png" and moved.abs_path == str(tmp_path / "moved/sub/benign/img0.png")
    assert store.current_label(first.id) == "normal"  # the app correction survives re-import
    assert [m.path for m in store.masks(first.id)] == [str(tmp_path / "moved/sub/benign/img0_mask.png")]
    assert len(store.images()) == 6

    # re-import unchanged: nothing written
    c3 = store.import_scan(scan2)
    assert c3["unchanged"] == 6 and c3["labels"] == 0 and c3["masks_added"] == 0

    # a label that changed in the dataset itself is picked up (history row by 'import')
    scan2.images[1].label = "normal"
    c4 = store.import_scan(scan2)
    assert c4["labels"] == 1
    img1 = store.image_id_for_hash("hash0001")
    assert store.current_label(img1) == "normal"
    assert store.label_history(img1)[-1].action == "import"


def test_import_duplicates_and_missing(store, tmp_path):
    scan = make_scan(tmp_path, 4)
    scan.images.append(FakeRecord(tmp_path / "copy.png", "copy.png", "hash0000", "benign"))
    c = store.import_scan(scan)
    assert c["new"] == 4 and c["duplicates"] == 1
    c2 = store.import_scan(FakeScan(tmp_path, scan.images[:2]))
    assert c2["missing"] == 2 and len(store.images()) == 4  # nothing is deleted


def test_masks_history(store):
    (img,) = add_images(store, 1)
    store.add_mask(img, "/m/a.png", "dataset", user="import")
    store.add_mask(img, "/m/b.png", "app", user="alice")
    assert [(m.path, m.source) for m in store.masks(img)] == [("/m/a.png", "dataset"), ("/m/b.png", "app")]
    assert store.remove_mask(img, "/m/b.png", user="alice") is not None
    assert store.remove_mask(img, "/m/none.png") is None
    assert [m.path for m in store.masks(img)] == ["/m/a.png"]
    assert [(m.action, m.path) for m in store.mask_history(img)] == [
        ("add", "/m/a.png"), ("add", "/m/b.png"), ("remove", "/m/b.png")]
    with pytest.raises(ValueError):
        store.add_mask(img, "/m/c.png", "elsewhere")


# -- splits, runs, predictions ---------------------------------------------------------------------------
def test_splits_roundtrip(store):
    ids = add_images(store, 4)
    store.save_split("main", {ids[0]: "train", ids[1]: "val", ids[2]: "test"}, params={"seed": 3})
    store.save_split("cv", {i: k for k, i in enumerate(ids)})
    assert store.load_split("main") == {ids[0]: "train", ids[1]: "val", ids[2]: "test"}
    assert store.load_split("cv") == {i: k for k, i in enumerate(ids)}  # fold numbers stay ints
    assert store.split_params("main") == {"seed": 3}
    store.save_split("main", {ids[3]: "train"})  # replace
    assert store.load_split("main") == {ids[3]: "train"}
    assert sorted(store.list_splits()) == ["cv", "main"]
    assert store.delete_split("cv")
    with pytest.raises(KeyError):
        store.load_split("cv")
    # a first split made by two runs at once: the first to save wins, the second gets False
    assert store.save_split_if_absent("first", {ids[0]: "train"}, {"seed": 1})
    assert not store.save_split_if_absent("first", {ids[1]: "test"}, {"seed": 2})
    assert store.load_split("first") == {ids[0]: "train"} and store.split_params("first") == {"seed": 1}


def test_runs_checkpoints_predictions(store, tmp_path):
    ids = add_images(store, 3)
    run = store.add_run("pretrain", "mae-1", {"lr": 1e-3}, run_dir=tmp_path / "r1")
    assert store.get_run(run).state == "pending"
    store.update_run(run, state="running")
    store.update_run(run, state="finished", metrics={"loss": 0.1})
    r = store.get_run(run)
    assert r.state == "finished" and r.finished is not None and r.metrics == {"loss": 0.1}
    assert r.config == {"lr": 1e-3} and r.run_dir == str(tmp_path / "r1")
    store.add_run("finetune", "ft-1")
    assert [x.name for x in store.list_runs("pretrain")] == ["mae-1"]
    assert len(store.list_runs()) == 2

    store.add_checkpoint(run, tmp_path / "r1/ep1.safetensors", 1, {"loss": 0.2})
    assert [(c.epoch, c.metrics) for c in store.checkpoints(run)] == [(1, {"loss": 0.2})]

    n = store.add_predictions(run, [
        {"image_id": ids[0], "label": "a", "probs": {"a": 0.9, "b": 0.1}, "uncertainty": {"entropy": 0.3}},
        (ids[1], "b", [0.2, 0.8], {"entropy": 0.5}),
    ])
    assert n == 2
    preds = store.predictions(run)
    assert [(p.image_id, p.label) for p in preds] == [(ids[0], "a"), (ids[1], "b")]
    assert preds[0].probs == {"a": 0.9, "b": 0.1} and preds[1].probs == [0.2, 0.8]

    assert store.delete_run(run)
    assert store.checkpoints(run) == [] and store.predictions(run) == []
    with pytest.raises(KeyError):
        store.update_run(run, state="failed")


# -- atomicity ----------------------------------------------------------------------------------------
def test_failed_multi_row_writes_leave_nothing(store, tmp_path):
    ids = add_images(store, 3)
    run = store.add_run("predict", "p")
    rows = [(ids[0], "a", [1.0], {}), (ids[1], "b", [1.0], {}), (999, "c", [1.0], {}), (ids[2], "a", [1.0], {})]
    with pytest.raises(sqlite3.IntegrityError):  # image 999 does not exist (foreign key)
        store.add_predictions(run, rows)
    assert store.predictions(run) == []

    store.save_split("s", {ids[0]: "train"})
    with pytest.raises(sqlite3.IntegrityError):
        store.save_split("s", {ids[1]: "train", 999: "val"})
    assert store.load_split("s") == {ids[0]: "train"}  # the old split is intact

    with pytest.raises(KeyError):
        store.set_labels({ids[0]: "a", ids[1]: "b", 999: "c"}, user="u")
    assert store.labels() == {i: None for i in ids} and store.classes() == []

    # an exception in the middle of an import rolls the whole import back
    scan = make_scan(tmp_path, 6)
    scan.images[3].width = "not a number"
    with pytest.raises(ValueError):
        store.import_scan(scan)
    assert len(store.images()) == 3 and store.classes() == [] and store.get_meta("root") is None

    # caller-level grouping
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.set_label(ids[0], "a", user="u")
            store.add_mask(ids[0], "/m.png")
            raise RuntimeError("boom")
    assert store.current_label(ids[0]) is None and store.masks(ids[0]) == []


# -- a full disk -------------------------------------------------------------------------------------------
def _everything(store: ProjectStore, run: int) -> tuple:
    """All a project holds that the writes below touch, read back from the file."""
    images = store.images()
    return (images, store.labels(), store.classes(), store.label_audit(), store.meta(),
            {im.id: store.mask_history(im.id) for im in images}, store.predictions(run), store.list_runs())


def _new_images(root: Path, i: int) -> FakeScan:
    return FakeScan(root, [FakeRecord(root / f"benign/new{i}-{k}.png", f"benign/new{i}-{k}.png", f"new{i}-{k}",
                                      "benign", mask_paths=[root / f"benign/new{i}-{k}_mask.png"]) for k in range(3)])


FULL_DISK_WRITES = {
    "set_label": lambda s, ids, run, root, i: s.set_label(ids[i % len(ids)], ["benign", "normal"][i // len(ids) % 2],
                                                           user="u"),
    "set_labels": lambda s, ids, run, root, i: s.set_labels({x: ["benign", "normal"][(i + k) % 2]
                                                             for k, x in enumerate(ids)}, user="u"),
    "add_mask": lambda s, ids, run, root, i: s.add_mask(ids[i % len(ids)], f"/m/{i}_mask.png", user="u"),
    "import_scan": lambda s, ids, run, root, i: s.import_scan(_new_images(root, i)),
    "add_predictions": lambda s, ids, run, root, i: s.add_predictions(
        run, [(x, "benign", {"benign": 0.6, "normal": 0.4}, {"note": "x" * (40 * i)}) for x in ids]),
}


@pytest.mark.parametrize("method", list(FULL_DISK_WRITES))
def test_a_full_disk_refuses_the_write_clearly_and_keeps_everything_saved_before(tmp_path, method):
    from core.project.store import StoreWriteError
    from tests.full_disk import fill_disk, free_space, write_until_full

    write = FULL_DISK_WRITES[method]
    store = ProjectStore(tmp_path / "project.db")
    store.import_scan(make_scan(tmp_path / "data"))
    ids = [im.id for im in store.images()]
    store.set_label(ids[0], "normal", user="alice")
    run = store.add_run("predict", "p")
    store.add_predictions(run, [(ids[1], "benign", {"benign": 0.9, "normal": 0.1}, {"entropy": 0.3})])
    fill_disk(store._conn())

    snapshots = []

    def step(i: int) -> None:
        snapshots.append(_everything(store, run))
        write(store, ids, run, tmp_path / "data", i)

    committed, err = write_until_full(step)
    before = snapshots[-1]            # the state just before the refused write
    assert isinstance(err, StoreWriteError)
    message = str(err)
    assert message.startswith(f"{store.path}: not saved, the disk is full")
    assert "Nothing of this change was written; everything saved before is intact" in message
    assert not store._conn().in_transaction
    assert store.integrity_check() == "ok"
    assert _everything(store, run) == before
    with ProjectStore(store.path) as other:            # another connection reads the same from the file
        assert other.integrity_check() == "ok"
        assert _everything(other, run) == before
    if committed:
        assert before != snapshots[0]                  # the writes made before the disk filled are all kept

    # space is back: the same store (and its connection) writes again
    free_space(store._conn())
    write(store, ids, run, tmp_path / "data", committed)
    after = _everything(store, run)
    assert after != before
    store.close()
    with ProjectStore(tmp_path / "project.db") as reopened:
        assert _everything(reopened, run) == after


def test_a_full_disk_when_the_project_file_is_created_is_the_same_clear_error(tmp_path, monkeypatch):
    """A new project on a full disk: the schema cannot be written, and the error says so (not a raw
    sqlite3.OperationalError)."""
    from core.project.store import StoreWriteError
    from tests.full_disk import every_connection_full

    every_connection_full(monkeypatch)
    with pytest.raises(StoreWriteError, match="not saved, the disk is full") as err:
        ProjectStore(tmp_path / "new" / "project.db")
    assert str(tmp_path / "new" / "project.db") in str(err.value)


# -- migrations -----------------------------------------------------------------------------------------
def test_migration_from_v1(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])    # a file of the first schema
    path = tmp_path / "old.db"
    with ProjectStore(path) as s:
        (img,) = add_images(s, 1)
        s.set_label(img, "benign", user="alice")
        assert s.schema_version == 1

    def add_reviewed_flag(conn):
        conn.execute("ALTER TABLE images ADD COLUMN reviewed INTEGER NOT NULL DEFAULT 0")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, add_reviewed_flag])
    with ProjectStore(path) as s:
        assert s.schema_version == 2
        cols = [r[1] for r in s._conn().execute("PRAGMA table_info(images)")]
        assert "reviewed" in cols
        assert s.current_label(img) == "benign" and s.label_history(img)[0].user == "alice"
    assert (tmp_path / "old.db.v1.bak").exists()
    with ProjectStore(path) as s:  # opening again does not re-run it
        assert s.schema_version == 2


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])    # a file of the first schema
    path = tmp_path / "p.db"
    ProjectStore(path).close()

    def broken(conn):
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    with pytest.raises(RuntimeError):
        ProjectStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchone() is None
    conn.close()


def test_newer_file_refused(tmp_path, monkeypatch):
    path = tmp_path / "p.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, lambda conn: None])
    ProjectStore(path).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
    with pytest.raises(StoreVersionError):
        ProjectStore(path)


# -- crash safety ---------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    from core.project.store import ProjectStore
    s = ProjectStore(sys.argv[1])
    ids = [im.id for im in s.images()]
    i = 0
    while True:
        eid = s.set_label(ids[i % len(ids)], "c%d" % (i % 7), user="child")
        print(eid, flush=True)
        i += 1
""")


def test_sigkill_mid_writes_keeps_committed_labels(tmp_path):
    path = tmp_path / "p.db"
    with ProjectStore(path) as s:
        add_images(s, 5)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # The child's report is read from the raw pipe (os.read, no buffer in this process) and read to the
    # end after the kill, so every line the child wrote is counted: readline() + communicate() lost the
    # lines readline had buffered beyond the one it returned.
    err_file = open(tmp_path / "child.err", "w+")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=err_file, cwd=REPO_ROOT, env=env, bufsize=0)
    data = b""
    try:
        fd = proc.stdout.fileno()
        deadline = time.time() + 60
        while data.count(b"\n") < 60 and time.time() < deadline:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        os.kill(proc.pid, signal.SIGKILL)
        while chunk := os.read(fd, 65536):      # what the child wrote before it died
            data += chunk
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        err_file.seek(0)
        err = err_file.read()
        err_file.close()
    complete = data[: data.rfind(b"\n") + 1]    # a line cut by the kill was not reported
    reported = [int(x) for x in complete.split()]
    assert proc.returncode == -signal.SIGKILL, err
    assert len(reported) >= 60, err

    with ProjectStore(path) as s:
        assert s.integrity_check() == "ok"
        stored = {e.id for e in s.label_audit(user="child")}
        assert set(reported) <= stored
        assert len(stored) - len(reported) <= 1  # at most the one commit that had not printed yet
        s.set_label(1, "after-crash", user="u")  # still writable
        assert s.current_label(1) == "after-crash"


# -- threads ------------------------------------------------------------------------------------------
def test_concurrent_reader_and_writer_threads(store):
    ids = add_images(store, 20)
    n_writes = 150
    errors: list[BaseException] = []
    done = threading.Event()
    seen_counts: list[int] = []

    def writer():
        try:
            for i in range(n_writes):
                store.set_label(ids[i % len(ids)], f"c{i % 4}-{i // len(ids)}", user="worker")
            run = store.add_run("predict", "p")
            store.add_predictions(run, [(i, "c0", [1.0], {}) for i in ids])
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()
            store.release_thread()

    def reader():
        try:
            while not done.is_set():
                labels = store.labels()
                assert len(labels) == len(ids)
                seen_counts.append(len(store.label_audit(user="worker")))
                store.label_history(ids[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    # the test's own thread reads too (the "UI thread")
    while not done.is_set():
        store.classes()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert seen_counts == sorted(seen_counts)  # a reader never sees commits disappear
    assert len(store.label_audit(user="worker")) == n_writes
    assert len(store.predictions(store.list_runs()[0].id)) == len(ids)


def test_two_stores_same_file_two_writers(tmp_path):
    """Two writers (e.g. app + CLI) serialise through BEGIN IMMEDIATE + busy timeout: no lost updates."""
    path = tmp_path / "p.db"
    a, b = ProjectStore(path), ProjectStore(path)
    try:
        ids = add_images(a, 2)
        errors = []

        def work(s, img):
            try:
                for i in range(40):
                    s.set_label(img, f"l{i}", user="w")
                    s.undo_label(img, user="w")
                    s.redo_label(img, user="w")
            except BaseException as exc:
                errors.append(exc)

        ts = [threading.Thread(target=work, args=(a, ids[0])), threading.Thread(target=work, args=(b, ids[1]))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        assert not errors, errors
        assert a.labels() == {ids[0]: "l39", ids[1]: "l39"}
        assert len(b.label_history(ids[0])) == 120
    finally:
        a.close()
        b.close()


def test_garbage_project_file_is_a_clear_error_and_left_as_it_is(tmp_path, capsys):
    from core.cli import main
    from core.project.store import ProjectFileError

    db = tmp_path / "imgs" / ".medssl" / "project.db"
    db.parent.mkdir(parents=True)
    garbage = b"this is not an SQLite database, just bytes " * 100
    db.write_bytes(garbage)
    with pytest.raises(ProjectFileError, match="not a MedSSL project file") as err:
        ProjectStore(db)
    assert str(db) in str(err.value)
    assert db.read_bytes() == garbage
    assert main(["scan", str(tmp_path / "imgs"), "--store"]) == 1
    assert str(db) in capsys.readouterr().err
    assert db.read_bytes() == garbage
