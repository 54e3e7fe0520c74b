"""Child processes of the reliability suite, and the fork server that starts them.

Run as a script (``python workers.py zygote``) this is a fork server: it
imports unstoppable once, then forks a fresh child per request, so a kill loop
pays a few milliseconds per child instead of an interpreter start. The children
are ordinary processes (their own pid, files and locks); the tests kill them
with SIGKILL.

Roles (each a function ``role_<name>(args)``, run in the forked child):

produce
    An idempotent asyncio Producer sending keyed records forever (or until
    ``stop_file`` exists). Every acknowledged record is written, the moment
    its delivery future resolves, as one line to ``acks_file`` (O_APPEND, one
    ``write`` per ack, so it survives SIGKILL)::

        <partition> <offset> <digest> <producer> <incarnation> <i>

    Values are ``b"<producer>|<incarnation>|<i>|<key>|"`` plus padding, so the
    log itself tells which send a record came from.
consume
    A group member applying every record's effect to a SQLite table and saving
    the offset with SQLiteOffsetStore in the same transaction. Before each
    transaction it writes ``B <partition> <first> <last>`` to ``progress_file``,
    after the COMMIT ``C <partition> <last>``: a kill between the two lines
    landed between effect and commit.
booking_worker
    One worker of the booking service (``run_worker``), until SIGTERM.
processor
    A group member running ``us.Processor`` whose handler writes one effect
    row per record, fails on poison records (``poison`` in the value) always
    and on others now and then (a transient failure), and dead-letters into a
    table of its own. Writes ``B <partition> <first> <last>`` to
    ``progress_file`` as a run's transaction begins and ``C <partition>``
    after it was processed, until ``stop_file`` exists.
churn_read, churn_write
    Read every partition (or append) in a loop while another process truncates
    the log's files, counting the library's errors and anything else, and
    write a JSON summary with ``sigbus_absorbed()`` when ``stop_file`` appears.

Protocol of the fork server: one JSON object per line on stdin, one answer per
line on stdout::

    {"op": "spawn", "role": "produce", "args": {...}, "out": path} -> {"pid": n}
    {"op": "wait", "pid": n, "block": true}  -> {"status": s}   (-signal, exit code, or null)
    {"op": "exit"}
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import time

import unstoppable as us
from unstoppable import TopicPartition
from unstoppable.booking.service import run_worker  # loaded once by the fork server

_O_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def digest(value: bytes) -> str:
    return hashlib.blake2b(bytes(value), digest_size=8).hexdigest()


def parse_value(value: bytes):
    """(producer, incarnation, i, key) of a value written by role_produce."""
    producer, inc, i, key, _ = bytes(value).split(b"|", 4)
    return producer.decode(), int(inc), int(i), key


# ---------------------------------------------------------------- produce

def role_produce(a: dict) -> int:
    rnd = random.Random(a.get("seed", 0))
    name = a["producer"]
    inc = a["inc"]
    keys = a.get("keys", 16)
    pad_max = a.get("pad_max", 200)
    window = a.get("window", 64)
    stop_file = a.get("stop_file")
    fd = os.open(a["acks_file"], _O_APPEND, 0o644)
    bname = name.encode()

    log = us.Log(a["log"], create=False)

    def on_ack(fut, dig, i):
        e = fut.exception()
        if e is not None:
            os.write(fd, f"E {name} {inc} {i} {type(e).__name__}: {e}\n".encode())
            return
        md = fut.result()
        os.write(fd, b"%d %d %s %s %d %d\n" % (md.partition, md.offset, dig.encode(), bname, inc, i))

    async def main():
        async with us.Producer(log, a["topic"], acks=a["acks"], producer_id=name,
                               linger_ms=a.get("linger_ms", 0),
                               batch_bytes=a.get("batch_bytes", 4096)) as p:
            i = 0
            while True:
                for _ in range(window):
                    key = b"key%d" % rnd.randrange(keys)
                    value = b"%s|%d|%d|%s|" % (bname, inc, i, key) + b"." * rnd.randrange(pad_max)
                    fut = await p.send(value, key=key)
                    fut.add_done_callback(lambda f, d=digest(value), j=i: on_ack(f, d, j))
                    i += 1
                await p.flush()
                await asyncio.sleep(0)  # let the ack callbacks run
                if a.get("pause_ms"):
                    await asyncio.sleep(rnd.random() * a["pause_ms"] / 1000)
                if stop_file and os.path.exists(stop_file):
                    return

    asyncio.run(main())
    log.close()
    return 0


# ---------------------------------------------------------------- consume

EFFECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, part INTEGER NOT NULL, off INTEGER NOT NULL,
    digest TEXT NOT NULL, member TEXT NOT NULL);
"""


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=60000")
    db.executescript(EFFECTS_SCHEMA)
    return db


def role_consume(a: dict) -> int:
    group = a["group"]
    member = a.get("member", str(os.getpid()))
    hold = a.get("hold_ms", 0) / 1000.0
    stop_file = a.get("stop_file")
    prog = os.open(a["progress_file"], _O_APPEND, 0o644)
    db = open_db(a["db"])
    store = us.SQLiteOffsetStore(db)
    log = us.Log(a["log"], create=False)
    rnd = random.Random(a.get("seed", 0))

    async def main():
        async with us.Consumer(log, a["topic"], group=group, offset_store=store,
                               membership_poll_ms=a.get("membership_poll_ms", 50),
                               max_poll_records=a.get("max_records", 50)) as c:
            while True:
                got = await c.getmany(timeout_ms=50)
                for tp, recs in got.items():
                    os.write(prog, b"B %d %d %d\n" % (tp.partition, recs[0].offset, recs[-1].offset))
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany(
                        "INSERT INTO effects (part, off, digest, member) VALUES (?, ?, ?, ?)",
                        [(r.partition, r.offset, digest(r.value), member) for r in recs])
                    if hold:
                        time.sleep(rnd.random() * hold)
                    store.save({TopicPartition(tp.topic, tp.partition): recs[-1].offset + 1},
                               group=group)
                    db.execute("COMMIT")
                    os.write(prog, b"C %d %d\n" % (tp.partition, recs[-1].offset))
                if not got and stop_file and os.path.exists(stop_file):
                    return

    asyncio.run(main())
    log.close()
    db.close()
    return 0


# ------------------------------------------------------ files cut under us

def role_churn_read(a: dict) -> int:
    """Read every partition over and over while another process truncates the
    files; every failure must be one of the library's errors. Writes a JSON
    summary (with the SIGBUS faults the guard absorbed) at the end."""
    from unstoppable._core.segment import sigbus_absorbed
    from unstoppable.errors import UnstoppableError
    counts = {"reads": 0, "records": 0, "errors": {}, "other": []}
    stop = a["stop_file"]
    log = us.Log(a["log"], create=False)
    t = log.topic(a["topic"])
    while not os.path.exists(stop):
        for p in t:
            try:
                off = p.start_offset
                end = p.end_offset
                while off < end:
                    rs = p.read(off, max_records=200)
                    if not rs:
                        break
                    assert rs[0].offset == off, (rs[0].offset, off)
                    for r in rs:
                        bytes(r.value)
                    counts["records"] += len(rs)
                    off = rs[-1].offset + 1
                p.offset_for_time(0)
                counts["reads"] += 1
            except UnstoppableError as e:
                k = type(e).__name__
                counts["errors"][k] = counts["errors"].get(k, 0) + 1
            except Exception as e:  # anything else is a finding
                counts["other"].append(f"{type(e).__name__}: {e}")
        if counts["reads"] % 7 == 0:
            try:
                log.verify()
            except UnstoppableError as e:
                k = "verify:" + type(e).__name__
                counts["errors"][k] = counts["errors"].get(k, 0) + 1
    counts["sigbus_absorbed"] = sigbus_absorbed()
    with open(a["counts_file"], "w") as f:
        json.dump(counts, f)
    os._exit(0)   # skip close(): its fsync may meet the same cut files


def role_churn_write(a: dict) -> int:
    """Append while another process truncates the files (same summary)."""
    from unstoppable._core.segment import sigbus_absorbed
    from unstoppable.errors import UnstoppableError
    counts = {"appends": 0, "errors": {}, "other": []}
    stop = a["stop_file"]
    log = us.Log(a["log"], create=False)
    t = log.topic(a["topic"])
    i = 0
    while not os.path.exists(stop):
        p = t.partition(i % t.partitions)
        try:
            p.append([b"w%d" % i + b"." * (i % 300)])
            counts["appends"] += 1
        except UnstoppableError as e:
            k = type(e).__name__
            counts["errors"][k] = counts["errors"].get(k, 0) + 1
        except Exception as e:
            counts["other"].append(f"{type(e).__name__}: {e}")
        i += 1
    counts["sigbus_absorbed"] = sigbus_absorbed()
    with open(a["counts_file"], "w") as f:
        json.dump(counts, f)
    os._exit(0)


# ---------------------------------------------------------------- booking

def role_booking_worker(a: dict) -> int:
    """One worker of the booking service (until SIGTERM)."""
    run_worker(a["cfg"])
    return 0


# -------------------------------------------------------------- processor

PROCESSOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (part INTEGER NOT NULL, off INTEGER NOT NULL, member TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead (part INTEGER NOT NULL, off INTEGER NOT NULL, error TEXT NOT NULL,
                                 attempts INTEGER NOT NULL, member TEXT NOT NULL);
"""


def role_processor(a: dict) -> int:
    """us.Processor with a handler that fails on some records (see the module docstring)."""
    rnd = random.Random()
    member = a["member"]
    db = sqlite3.connect(a["db"], timeout=60, isolation_level=None)
    for _ in range(200):  # a journal-mode change can be refused as busy without waiting
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise
            time.sleep(0.05)
    db.executescript(PROCESSOR_SCHEMA)
    store = us.SQLiteOffsetStore(db)
    prog = os.open(a["progress_file"], _O_APPEND, 0o644)
    hold = a.get("hold_ms", 3) / 1000

    def handler(db, tp, records):
        os.write(prog, b"B %d %d %d\n" % (tp.partition, records[0].offset, records[-1].offset))
        for i, r in enumerate(records):
            if b"poison" in bytes(r.value) or rnd.random() < a.get("flaky", 0.002):
                if i and rnd.random() < 0.5:
                    db.executemany("INSERT INTO effects VALUES (?,?,?)",
                                   [(tp.partition, x.offset, member) for x in records[:i]])
                    raise us.RecordFailed(i, ValueError(f"cannot handle {r.offset}"),
                                          applied=rnd.random() < 0.5)
                raise ValueError(f"cannot handle {r.offset}")
        db.executemany("INSERT INTO effects VALUES (?,?,?)",
                       [(tp.partition, r.offset, member) for r in records])
        time.sleep(hold)                 # widen the window for a kill inside the transaction

    def dead_letter(db, tp, rec, error, attempts):
        db.execute("INSERT INTO dead VALUES (?,?,?,?,?)", (tp.partition, rec.offset, error, attempts, member))

    async def main():
        log = us.Log(a["log"], create=False)
        try:
            async with us.Consumer(log, a["topic"], group=a["group"], offset_store=store,
                                   max_poll_records=a.get("max_records", 50),
                                   membership_poll_ms=50) as c:
                proc = us.Processor(c, store, handler, group=a["group"], max_attempts=3, backoff_ms=1,
                                    dead_letter=dead_letter)
                while not os.path.exists(a["stop_file"]):
                    for tp, recs in (await c.getmany(timeout_ms=20)).items():
                        await proc.process(tp, recs)
                        os.write(prog, b"C %d\n" % tp.partition)
        finally:
            log.close()

    asyncio.run(main())
    db.close()
    return 0


# ------------------------------------------------------------ fork server

def _child(role: str, args: dict, out: str) -> None:
    """In the forked child: detach from the server's pipes, run the role, exit."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if role != "booking_worker":      # run_worker unblocks it once its handlers are in
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        random.seed()
        code = globals()[f"role_{role}"](args)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def zygote() -> None:
    try:  # imported once here, not in every booking worker
        import unstoppable.booking.service  # noqa: F401
    except ImportError:
        pass
    inp = sys.stdin
    out = sys.stdout
    for line in inp:
        req = json.loads(line)
        op = req["op"]
        if op == "spawn":
            # SIGTERM stays blocked across the fork: a child the test stops
            # with SIGTERM right after spawning it gets the signal only once
            # its role is ready for it (see _child).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            pid = os.fork()
            if pid == 0:
                _child(req["role"], req["args"], req["out"])
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            reply = {"pid": pid}
        elif op == "wait":
            flags = 0 if req.get("block", True) else os.WNOHANG
            try:
                got, status = os.waitpid(req["pid"], flags)
            except ChildProcessError:
                reply = {"status": None, "error": "no such child"}
            else:
                if got == 0:
                    reply = {"status": None}
                elif os.WIFSIGNALED(status):
                    reply = {"status": -os.WTERMSIG(status)}
                else:
                    reply = {"status": os.WEXITSTATUS(status)}
        elif op == "exit":
            return
        else:
            reply = {"error": f"unknown op {op!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1] == "zygote":
        zygote()
    else:  # run one role directly: workers.py ROLE JSON_ARGS
        sys.exit(globals()[f"role_{sys.argv[1]}"](json.loads(sys.argv[2])))
