"""Open + scan a project folder in a child process (``python -m desktop.bridge.scan_process``), reporting back
through its stdout.

Why a process and not a thread: scanning is thousands of small file reads, hashes and SQLite steps.
Each one releases and retakes Python's GIL, and CPython then hands the GIL straight back to the same
thread (the "convoy effect"), so a scanning *thread* starves the UI thread for 100+ ms at a time however
little CPU it uses. A child process has its own GIL: the window stays smooth whatever the scan does.

The child runs :func:`scan_worker` (no Qt here: it imports only ``core`` and :mod:`desktop.bridge.rows`) and
writes length-prefixed pickled messages to its stdout; the parent's job thread runs :func:`run_scan`,
which relays them to the job context (progress) and to callbacks (rows to show early, store ready).
Cancel: the parent writes ``cancel`` to the child's stdin; a closed stdin (the app died) cancels too,
so a scan never outlives its window. A plain subprocess (not ``multiprocessing``) starts in a few ms
without forking this big process and needs no ``if __name__ == "__main__"`` guard in the caller.
"""

from __future__ import annotations

import json
import os
import pickle
import queue as queue_mod
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

PROGRESS_INTERVAL_S = 0.05
_HEADER = struct.Struct("<Q")


class _ChildContext:
    """The part of ``core.jobs.JobContext`` that ``scan_folder`` uses, forwarded to the parent."""

    def __init__(self, send, cancel: threading.Event):
        self._send, self._cancel, self._last = send, cancel, 0.0
        self.state_dir = None
        self.job_id = "scan"

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            from core.jobs import JobCancelled

            raise JobCancelled("scan cancelled")

    def progress(self, step: int, total: int | None = None, message: str = "", **metrics: float) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S or (total is not None and step >= total):
            self._last = now
            self._send(("progress", step, total, message))

    def log(self, message: str) -> None:
        self._send(("log", message))


def scan_worker(store_path: str, root: str, folder_writable: bool, send_rows: bool, send, cancel) -> None:
    """Open (create / migrate) the store, [send stored rows], scan, import, send the final rows."""
    from core.jobs import JobCancelled

    try:
        from core.data.library import scan_folder
        from core.project.store import ProjectStore
        from desktop.bridge.rows import read_items

        ctx = _ChildContext(send, cancel)
        store_file, root_path = Path(store_path), Path(root)
        with ProjectStore(store_file) as store:
            if not folder_writable:
                store.set_meta("root", str(root_path))
            send(("store",))
            if send_rows and store.images():
                send(("rows", read_items(store, ctx, masks=False)))   # a first look; the mask dots follow
            ctx.check_cancelled()
            scan = scan_folder(root_path, ctx=ctx, workers=min(4, os.cpu_count() or 1))
            ctx.check_cancelled()
            ctx.progress(0, None, "saving to project")
            counts = store.import_scan(scan)
            summary = scan.summary()
            counts["label_conflicts"], counts["identical_files"] = summary["label_conflicts"], summary["identical_files"]
            send(("done", read_items(store, ctx), counts, list(scan.errors)))
    except JobCancelled:
        send(("cancelled",))
    except BaseException as exc:  # reported to the user by the parent
        send(("error", f"{type(exc).__name__}: {exc}"))


def _child_main() -> int:
    """Entry point of ``python -m desktop.bridge.scan_process '<json args>'``."""
    try:
        os.nice(10)          # background work: the UI process gets the CPU first
    except (AttributeError, OSError):
        pass
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr            # stray prints must not corrupt the message stream
    lock = threading.Lock()

    def send(msg) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        with lock:
            out.write(_HEADER.pack(len(data)) + data)
            out.flush()

    cancel = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        cancel.set()                   # "cancel", or stdin closed: the parent is gone

    threading.Thread(target=watch_stdin, daemon=True).start()
    args = json.loads(sys.argv[-1])
    scan_worker(args["store"], args["root"], args["writable"], args["send_rows"], send, cancel)
    out.close()
    return 0


SCAN_WORKER_FLAG = "--scan-worker"


def child_command(args: str) -> list[str]:
    """How to start the scan child: ``python -m`` from a Python install; the app binary itself with
    ``--scan-worker`` in a PyInstaller bundle, which has no Python to run ``-m`` with."""
    if getattr(sys, "frozen", False):
        return [sys.executable, SCAN_WORKER_FLAG, args]
    return [sys.executable, "-m", "desktop.bridge.scan_process", args]


def _reader(stream, q: queue_mod.Queue) -> None:
    try:
        while True:
            head = stream.read(_HEADER.size)
            if len(head) < _HEADER.size:
                break
            (n,) = _HEADER.unpack(head)
            q.put(pickle.loads(stream.read(n)))
    except Exception as exc:  # a broken stream ends the scan with an error
        q.put(("error", f"lost contact with the scan process: {exc}"))
    q.put(None)


def run_scan(ctx, store_path: Path, root: Path, folder_writable: bool, *,
             on_rows: Callable[[list], None], on_store: Callable[[], None],
             read_stored: Callable[[], list] | None = None):
    """Parent side (a job thread): start the child, relay its messages; returns (rows, counts, errors).

    Before the child has started (~0.3 s), the grid gets rows from here: the stored rows of a known
    project (``read_stored``, after ``on_store``; the child sends complete rows right after), or a quick
    file listing of a new one.
    """
    from core.jobs import JobCancelled

    stored = Path(store_path).exists()
    if stored and read_stored is not None:
        on_store()
        on_rows(read_stored())
    elif not stored:
        # a new project: list the files here first (a few ms per thousand files), so the grid and its
        # thumbnails appear before the child process has even started
        from desktop.bridge.rows import quick_listing

        ctx.progress(0, None, "listing files")
        on_rows(quick_listing(Path(root)))
    args = json.dumps({"store": str(store_path), "root": str(root), "writable": bool(folder_writable),
                       "send_rows": bool(stored)})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    proc = subprocess.Popen(child_command(args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=False)
    q: queue_mod.Queue = queue_mod.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), name="scan-reader", daemon=True).start()
    cancel_sent = False
    try:
        while True:
            # asked on every message, not only when none came for a while: a scan sends progress every
            # 50 ms, so a cancel looked at only on a quiet queue reached the child after the whole scan
            if ctx.cancel_requested and not cancel_sent:
                cancel_sent = True
                try:
                    proc.stdin.write(b"cancel\n")
                    proc.stdin.flush()
                except OSError:
                    pass
            try:
                msg = q.get(timeout=0.1)
            except queue_mod.Empty:
                continue
            if msg is None:
                raise RuntimeError(f"the scan process stopped unexpectedly (exit code {proc.wait()})")
            kind = msg[0]
            if kind == "progress":
                ctx.progress(msg[1], msg[2], msg[3])
            elif kind == "log":
                ctx.log(msg[1])
            elif kind == "rows":
                on_rows(msg[1])
            elif kind == "store":
                if not (stored and read_stored is not None):
                    on_store()
            elif kind == "done":
                return msg[1], msg[2], msg[3]
            elif kind == "cancelled":
                raise JobCancelled("scan cancelled")
            elif kind == "error":
                raise RuntimeError(msg[1])
    finally:
        try:
            proc.stdin.close()          # the child cancels itself if it is still running
        except OSError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(_child_main())
