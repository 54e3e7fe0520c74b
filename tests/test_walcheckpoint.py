"""us.WalCheckpointer: WAL checkpoints on a thread of their own, against real
SQLite files. A checkpoint is seen where it lands: the database file grows
by the pages it copies, and the WAL, reset once checkpointed, stops growing."""
from __future__ import annotations

import os
import sqlite3
import time

import pytest

import unstoppable as us

PAGE = 4096


def _writer(path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")          # only the checkpointer checkpoints
    db.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    return db


def _write(db, pages: int) -> None:
    """About ``pages`` new WAL frames in one transaction (a 4,000-byte row each)."""
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?)", [(os.urandom(4000),) for _ in range(pages)])
    db.execute("COMMIT")


def _wait(cond, timeout=10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_checkpoints_the_written_files_and_keeps_the_wal_bounded(tmp_path):
    path = str(tmp_path / "b.db")
    db = _writer(path)
    with us.WalCheckpointer(interval=0.05) as ckpt:
        ckpt.add(path)
        for _ in range(30):                               # 9,000 pages in all
            _write(db, 300)
            time.sleep(0.1)
        # Copied into the database file meanwhile, not only at close.
        assert _wait(lambda: os.path.getsize(path) >= 8000 * PAGE), os.path.getsize(path)
        assert ckpt.checkpoints >= 5 and ckpt.errors == 0
    # The WAL restarts from its start once checkpointed: it stays within a few
    # transactions' size, not the 9,000 pages written.
    assert os.path.getsize(path + "-wal") < 1500 * PAGE
    assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 30 * 300
    db.close()


def test_close_checkpoints_what_was_written_since(tmp_path):
    paths = [str(tmp_path / f"c{i}.db") for i in range(3)]
    dbs = [_writer(p) for p in paths]
    ckpt = us.WalCheckpointer(interval=3600)              # one checkpoint each, then none till close
    for p in paths:
        ckpt.add(p)
    assert _wait(lambda: ckpt.checkpoints == 3)
    for db in dbs:
        _write(db, 50)
    time.sleep(0.2)
    assert all(os.path.getsize(p) < 50 * PAGE for p in paths)     # still in the WALs
    ckpt.close()
    assert ckpt.checkpoints == 6
    assert all(os.path.getsize(p) >= 50 * PAGE for p in paths)
    with pytest.raises(RuntimeError, match="closed"):
        ckpt.add(paths[0])
    for db in dbs:
        db.close()


def test_a_failing_checkpoint_is_counted_and_tried_again(tmp_path):
    path = str(tmp_path / "e.db")
    def garbage_wal():
        with open(path + "-wal", "wb") as f:
            f.write(b"y" * PAGE)

    with open(path, "wb") as f:                           # not a database, with a WAL beside it
        f.write(b"x" * PAGE)
    garbage_wal()
    with us.WalCheckpointer(interval=0.05) as ckpt:
        ckpt.add(path)
        assert _wait(lambda: ckpt.errors >= 1)
        garbage_wal()                                     # (SQLite removed it on closing)
        assert _wait(lambda: ckpt.errors >= 2), "the failing checkpoint was not tried again"
        assert ckpt.checkpoints == 0
        os.unlink(path)
        if os.path.exists(path + "-wal"):
            os.unlink(path + "-wal")
        db = _writer(path)                                # a real one in its place
        _write(db, 50)
        assert _wait(lambda: os.path.getsize(path) >= 50 * PAGE), "not checkpointed once whole"
        assert ckpt.checkpoints >= 1
    assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 50
    db.close()


def test_bad_interval_is_named():
    with pytest.raises(ValueError, match="interval must be > 0"):
        us.WalCheckpointer(interval=0)
