"""WAL checkpoints of SQLite databases on a thread of their own.

A connection in WAL mode checkpoints inside the COMMIT that takes the WAL
past ``wal_autocheckpoint`` pages: that COMMIT copies the WAL's pages into
the database file and syncs both, and the writer waits for it. Measured
with one booking worker over 1 M events (eight partition files): 196
fdatasyncs took 1.09 s of its wall time, about a tenth.

:class:`WalCheckpointer` runs those checkpoints (``PRAGMA
wal_checkpoint(PASSIVE)``, which never blocks a writer or a reader) from
its own connections on its own thread; SQLite's module releases the GIL
while SQLite works, so the writer goes on meanwhile. What is durable when
does not change: SQLite's own checkpoint runs, with its syncs, only from
another connection. A writer keeps a larger ``wal_autocheckpoint`` as a
backstop, for when the checkpointer falls behind.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time

__all__ = ["WalCheckpointer"]


class WalCheckpointer:
    """WalCheckpointer(*, interval=1.0)

    Checkpoints the WAL of every database file :meth:`add` names, on a
    daemon thread: each file whose WAL was written since its last
    checkpoint (its ``-wal`` file's size or modification time changed), at
    most once every ``interval`` seconds, and each such file once more at
    :meth:`close`. A checkpoint that fails (a database locked for longer
    than its busy timeout, a file that is not a database) is counted in
    ``errors`` and tried again an ``interval`` later; the writer's own
    autocheckpoint stays as a backstop.

    Only ``stat`` looks at the files between checkpoints. Reading the
    WAL-index (``-shm``) for the count of frames waiting would need a
    descriptor of it, and closing any descriptor of a file drops every
    POSIX lock the process holds on it, SQLite's too: another process then
    takes the WAL-index for abandoned and resets it under the writer's
    mapping (measured here: a worker died of SIGBUS in 3 of 6 runs of the
    kill loop with such a reader).

    Use it as a context manager, or call :meth:`close`::

        with us.WalCheckpointer() as ckpt:
            ckpt.add("app.db")        # the writer: PRAGMA wal_autocheckpoint=<larger>
            ...
    """

    def __init__(self, *, interval: float = 1.0):
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self.checkpoints = 0            # checkpoints run
        self.errors = 0                 # checkpoints that raised (tried again later)
        self._paths: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, path: str) -> None:
        """Checkpoint the database file ``path`` from now on (its WAL is ``path-wal``)."""
        path = os.fspath(path)
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("WalCheckpointer is closed")
            if path not in self._paths:
                self._paths.append(path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the thread after a last checkpoint of every file written since its last."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    def __enter__(self) -> WalCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        dbs: dict[str, sqlite3.Connection] = {}
        done: dict[str, tuple] = {}         # path -> its WAL's (size, mtime) at its last checkpoint
        due: dict[str, float] = {}          # path -> when it may be checkpointed next
        tick = min(0.05, self.interval)
        try:
            while True:
                stopping = self._stop.wait(tick)
                with self._lock:
                    paths = list(self._paths)
                now = time.monotonic()
                for path in paths:
                    if not stopping and now < due.get(path, 0.0):
                        continue
                    try:
                        st = os.stat(path + "-wal")
                    except OSError:
                        continue
                    mark = (st.st_size, st.st_mtime_ns)
                    if done.get(path) == mark:
                        continue            # not written since its last checkpoint
                    due[path] = now + self.interval
                    try:
                        db = dbs.get(path)
                        if db is None:
                            db = dbs[path] = sqlite3.connect(path, timeout=5.0, isolation_level=None)
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        done[path] = mark
                        self.checkpoints += 1
                    except sqlite3.Error:
                        self.errors += 1
                        bad = dbs.pop(path, None)
                        if bad is not None:
                            bad.close()
                if stopping:
                    return
        finally:
            for db in dbs.values():
                db.close()
