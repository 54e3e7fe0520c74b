"""The booking service over a prefilled log of about 1 M booking events with
the demo's mix (requests, payments, duplicates, late and early payments,
expiries, poison records), each figure beside the same-run ``getmany`` rate
over the same log:

* one worker (its own process), cold start to the end of the log;
* three workers in three processes (shared read model), same;
* rebuild into a fresh database, in one process and in one per CPU;
* the floors under them: the state machine's own Python (decode, validate
  and apply over the in-memory state, with and without building the outcome
  messages; no SQLite, no log) and SQLite's (the read model's final rows
  written in the workers' transaction size).

A worker is "at the end" when every partition's committed offset is the
partition's end and the outbox is empty (every outcome published).

    python -m pytest -q -s bench/test_booking_bench.py      # BOOKING_EVENTS=200000 for a quick run
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import time
from dataclasses import replace

import pytest

import unstoppable as us
from unstoppable.booking import events as ev
from unstoppable.booking.partitionstore import PartitionStore
from unstoppable.booking.readmodel import (
    ReadModel,
    connect,
    diff_snapshots,
    partition_paths,
)
from unstoppable.booking.service import (
    ServiceConfig,
    apply_run,
    config_dict,
    create_topics,
    run_worker,
)
from unstoppable.booking.rebuild import rebuild

N_TARGET = int(os.environ.get("BOOKING_EVENTS", 1_000_000))
PARTITIONS = 8
TTL_MS = 2000


def make_booking_log(path: str, n_target: int = N_TARGET, seed: int = 7) -> tuple[ServiceConfig, int]:
    """Fill an embedded log at ``path``/log with about ``n_target`` booking
    events in the demo's mix; returns the service config and the event count.

    Per user: a request; 70% pay 0.5 s later, 5% of those after the hold
    expired (the expiry comes first); the unpaid get an expiry at the
    deadline; 2% pay before requesting; 3% of events are delivered twice;
    6 poison records (3 undecodable, 3 on the wrong partition). One user in
    ten contends for a popular seat (seats ~ users / 10, skewed like the demo)."""
    rnd = random.Random(seed)
    users = int(n_target / 2.08)
    seats = max(1, users // 10)
    home = us.DefaultPartitioner()
    parts: list[list] = [[] for _ in range(PARTITIONS)]
    t0 = int(time.time() * 1000)      # timers (ttl 1 h) stay in the future: the log carries the expiries
    enc = ev.CODEC.encode

    def add(ts, seat, value, part=None):
        k = seat.encode()
        p = home(k, PARTITIONS) if part is None else part
        parts[p].append((ts, k, value))
        if rnd.random() < 0.03:
            parts[p].append((ts + rnd.randrange(10, 1000), k, value))

    for u in range(users):
        ts = t0 + u * 20
        seat = f"seat-{min(int(seats * rnd.random() ** 1.6), seats - 1):06d}"
        user, bk = f"user-{u:07d}", f"bk-{u:07d}"
        if rnd.random() < 0.02:
            add(ts, seat, enc(ev.payment_received(bk, seat, f"pay-{u}", 4900, user, event_id=f"pay-{u}")))
            ts += 100
        add(ts, seat, enc(ev.reservation_requested(bk, user, seat, event_id=f"req-{u}")))
        if rnd.random() < 0.7:
            if rnd.random() < 0.05:
                add(ts + TTL_MS, seat, enc(ev.reservation_expired(bk, seat, ts + TTL_MS)))
                add(ts + TTL_MS + 500, seat, enc(ev.payment_received(bk, seat, f"pay-{u}", 4900, user,
                                                                     event_id=f"pay-{u}")))
            else:
                add(ts + 500, seat, enc(ev.payment_received(bk, seat, f"pay-{u}", 4900, user,
                                                            event_id=f"pay-{u}")))
        else:
            add(ts + TTL_MS, seat, enc(ev.reservation_expired(bk, seat, ts + TTL_MS)))
    for i in range(6):
        seat = f"seat-{rnd.randrange(seats):06d}"
        ts = t0 + rnd.randrange(users * 20)
        if i % 2 == 0:
            parts[home(seat.encode(), PARTITIONS)].append((ts, seat.encode(), b"\xff\x00 poison %d" % i))
        else:
            p = (home(seat.encode(), PARTITIONS) + 1) % PARTITIONS
            parts[p].append((ts, seat.encode(), enc(ev.reservation_requested(
                f"bk-poison-{i}", "user-poison", seat, event_id=f"poison-{i}"))))
    cfg = ServiceConfig(log_path=os.path.join(path, "log"), db_path=os.path.join(path, "live.db"),
                        ttl_ms=3_600_000, batch=5000, backoff_ms=1, max_attempts=2)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=PARTITIONS))
    total = 0
    for p, recs in enumerate(parts):
        recs.sort(key=lambda r: r[0])
        part = log.topic(cfg.topic).partition(p)
        for i in range(0, len(recs), 20000):
            part.append([(k, v, [], ts) for ts, k, v in recs[i:i + 20000]])
        total += len(recs)
    log.close()
    return cfg, total


def getmany_rate(cfg: ServiceConfig, n: int) -> float:
    """Baseline: records/s of a Consumer's getmany over the whole input topic."""
    async def main():
        log = us.Log(cfg.log_path)
        try:
            async with us.Consumer(log, cfg.topic, max_poll_records=5000) as c:
                t0 = time.perf_counter()
                got = 0
                while got < n:
                    for recs in (await c.getmany(timeout_ms=100)).values():
                        got += len(recs)
                return n / (time.perf_counter() - t0)
        finally:
            log.close()
    return asyncio.run(main())


class _Progress:
    """Whether the workers are at the end: every partition's committed offset
    at its end and every outbox empty. The read model's files are opened once
    and polled with two small queries each (opening a directory's reading
    connection on every poll took 13.8 ms, against 1.5 ms for one file,
    measured here: at 20 polls a second, a share of a core taken from the
    workers)."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.dbs: dict = {}

    def _files(self) -> dict:
        cfg = self.cfg
        if cfg.db_layout == "shared":
            return {0: cfg.db_path} if os.path.exists(cfg.db_path) else {}
        return partition_paths(cfg.db_path) if os.path.isdir(cfg.db_path) else {}

    def caught_up(self, ends: list) -> bool:
        for k, path in self._files().items():
            if k not in self.dbs:
                self.dbs[k] = sqlite3.connect(path, timeout=60)
        com: dict = {}
        try:
            for db in self.dbs.values():
                com.update(db.execute("SELECT part, next_offset FROM unstoppable_offsets WHERE grp=? "
                                      "AND topic=?", (self.cfg.group, self.cfg.topic)).fetchall())
            if any(com.get(p) != e for p, e in enumerate(ends)):
                return False
            return all(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
                       for db in self.dbs.values())
        except sqlite3.OperationalError:      # the workers have not made their tables yet
            return False

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        self.dbs.clear()


def _caught_up(cfg: ServiceConfig, ends: list) -> bool:
    """One-off :meth:`_Progress.caught_up`."""
    p = _Progress(cfg)
    try:
        return p.caught_up(ends)
    finally:
        p.close()


def _remove_read_model(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    for suffix in ("", "-wal", "-shm"):
        if os.path.isfile(path + suffix):
            os.unlink(path + suffix)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_workers(cfg: ServiceConfig, n_workers: int, timeout: float = 600, cpu: list | None = None) -> float:
    """Seconds from starting ``n_workers`` worker processes on a fresh read
    model (of ``cfg.db_layout``) until they have handled the whole log; the
    workers' CPU seconds at that moment (their sum) are appended to ``cpu``
    when given (the machine is shared: CPU per event swings less than wall)."""
    _remove_read_model(cfg.db_path)
    log = us.Log(cfg.log_path)
    ends = log.topic(cfg.topic).end_offsets()
    log.close()
    if cfg.db_layout == "shared":
        connect(cfg.db_path).close()
    ctx = mp.get_context("fork")
    os.sync()       # the earlier figures' writeback is not charged to this one
    t0 = time.perf_counter()
    procs = [ctx.Process(target=run_worker, args=(config_dict(cfg),)) for _ in range(n_workers)]
    for p in procs:
        p.start()
    progress = _Progress(cfg)
    try:
        while not progress.caught_up(ends):
            assert all(p.is_alive() for p in procs), "a worker died"
            assert time.perf_counter() - t0 < timeout, "the workers did not catch up in time"
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        if cpu is not None:
            cpu.append(sum(_cpu_seconds(p.pid) for p in procs))
        return wall
    finally:
        progress.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(30)


@pytest.fixture(scope="module")
def booking_log(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("booking"))
    t = time.perf_counter()
    cfg, n = make_booking_log(d)
    os.sync()       # the prefill's writeback is not charged to the first figure
    print(f"\nprefilled {n:,} booking events in {time.perf_counter() - t:.1f} s")
    return cfg, n


LAYOUTS = os.environ.get("BOOKING_LAYOUTS", "partition,shared").split(",")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("workers", [1, 3])
def test_workers_to_the_end_of_the_log(benchmark, booking_log, report, workers, layout):
    """One and three workers, on a read model of each layout ("partition":
    a file per partition; "shared": one file); BOOKING_LAYOUTS picks."""
    cfg, n = booking_log
    cfg = replace(cfg, db_path=cfg.db_path + f".{layout}", db_layout=layout)
    out = {}

    def run():
        out["base"] = getmany_rate(cfg, n)
        cpu: list = []
        out["s"] = run_workers(cfg, workers, cpu=cpu)
        out["cpu"] = cpu[0]
    benchmark.pedantic(run, rounds=1, iterations=1)
    rate = n / out["s"]
    report.append(f"booking, {workers} worker process(es), {layout} read model, cold start to the end of {n:,} events: "
                  f"{rate:,.0f} events/s ({out['s']:.1f} s); workers' CPU {out['cpu']:.1f} s, "
                  f"{out['cpu'] / n * 1e6:.2f} CPU-us/event; same-run getmany {out['base']:,.0f} "
                  f"records/s (ratio {rate / out['base']:.3f}; getmany-us/record {1e6 / out['base']:.3f})")
    db = connect(cfg.db_path)
    stats = ReadModel(db).stats()
    db.close()
    assert stats["events"] + stats["dead_letters"] == n
    assert stats["dead_letters"] == 6


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("processes", [1, None])
def test_rebuild(benchmark, booking_log, report, tmp_path, processes, layout):
    """The rebuild in one process, and in its default number of processes
    (one per CPU: partitions decided and bulk-loaded in forked helpers), into
    each layout; compared with the live read model of the same layout."""
    cfg, n = booking_log
    cfg = replace(cfg, db_path=cfg.db_path + f".{layout}", db_layout=layout)
    if not os.path.exists(cfg.db_path):
        run_workers(cfg, 1)
    out = {}
    k = [0]

    def run():
        k[0] += 1
        path = str(tmp_path / f"rebuilt{k[0]}.db")
        out["base"] = getmany_rate(cfg, n)
        # In a process of its own, as `unstoppable rebuild` runs: not in this
        # one, whose heap the earlier figures left large and fragmented (its
        # forked helpers then copy the pages they share on every write:
        # measured here, two processes 258-271k events/s after the
        # one-process rebuild in this process, 357k with no rebuild before).
        ctx = mp.get_context("spawn")
        os.sync()   # the earlier figures' writeback is not charged to this one
        rx, tx = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_timed_rebuild, args=(config_dict(cfg), path, processes, tx))
        proc.start()
        tx.close()
        out["s"] = rx.recv()
        proc.join(60)
        assert proc.exitcode == 0
        db = connect(path)
        out["snap"] = ReadModel(db).snapshot()
        db.close()
    benchmark.pedantic(run, rounds=1, iterations=1)
    rate = n / out["s"]
    procs = processes or f"{os.cpu_count()} (default)"
    report.append(f"booking rebuild of {n:,} events, {layout} layout, {procs} process(es): {rate:,.0f} events/s "
                  f"({out['s']:.1f} s); same-run getmany {out['base']:,.0f} records/s "
                  f"(ratio {rate / out['base']:.3f})")
    db = connect(cfg.db_path)
    live = ReadModel(db).snapshot()
    db.close()
    assert diff_snapshots(live, out["snap"]) == []


def _timed_rebuild(cfg: dict, path: str, processes, tx) -> None:
    """Sends the seconds of ``rebuild`` into ``path``, from the call to its return."""
    cfg = ServiceConfig(**cfg)
    log = us.Log(cfg.log_path)
    try:
        t = time.perf_counter()
        rm = asyncio.run(rebuild(log, cfg, path, processes=processes))
        s = time.perf_counter() - t
        rm.db.close()
    finally:
        log.close()
    tx.send(s)


def test_sqlite_floor_of_the_read_model(benchmark, booking_log, report, tmp_path):
    """The floor under the workers: the read model's final rows (seats,
    bookings, payments, history, timers, dead letters), written with
    ``executemany`` into a fresh read model (same schema, WAL, NORMAL sync) in
    transactions of the worker's size, with no decisions, decoding or
    publishing. The workers upsert more rows than this (a row changed in two
    runs is written twice), so this is a lower bound of their SQLite cost."""
    cfg, n = booking_log
    cfg = replace(cfg, db_path=cfg.db_path + ".shared", db_layout="shared")
    if not os.path.exists(cfg.db_path):
        run_workers(cfg, 1)
    src = connect(cfg.db_path)
    tables = ("seats", "bookings", "booking_users", "timers", "dead_letters")
    rows = {t: src.execute(f"SELECT * FROM {t}").fetchall() for t in tables}
    src.close()
    out = {}
    k = [0]

    def run():
        k[0] += 1
        db = connect(str(tmp_path / f"floor{k[0]}.db"))
        runs = max(1, n // cfg.batch)
        t = time.perf_counter()
        for i in range(runs):
            db.execute("BEGIN IMMEDIATE")
            for tbl, rs in rows.items():
                chunk = rs[i * len(rs) // runs:(i + 1) * len(rs) // runs]
                if chunk:
                    db.executemany(f"INSERT OR REPLACE INTO {tbl} VALUES "
                                   f"({','.join('?' * len(chunk[0]))})", chunk)
            db.execute("COMMIT")
        out["s"] = time.perf_counter() - t
        db.close()
    benchmark.pedantic(run, rounds=1, iterations=1)
    nrows = sum(len(r) for r in rows.values())
    report.append(f"SQLite floor of the read model: {nrows:,} final rows ({nrows / n:.2f} per event) "
                  f"in {out['s']:.1f} s = {n / out['s']:,.0f} events/s, {nrows / out['s']:,.0f} rows/s")


def read_runs(log, cfg) -> list:
    """Every partition of the input topic read in runs of ``cfg.batch``
    records, as a worker gets them: [(partition, records), ...]."""
    topic = log.topic(cfg.topic)
    runs = []
    for p in range(topic.partitions):
        part, off = topic.partition(p), 0
        while off < part.end_offset:
            recs = part.read(off, cfg.batch)
            runs.append((p, recs))
            off = recs[-1].offset + 1
    return runs


def test_state_machine_floor(benchmark, booking_log, report):
    """The floor under the rebuild and the workers: the decisions' own Python.
    Every record of the log (read beforehand) goes through the workers' batch
    path, ``apply_run`` (decode, validate, apply against the in-memory
    state), with nothing written: once with the outcome messages built and
    serialized (as a worker needs them), once without (as the rebuild)."""
    cfg, n = booking_log
    log = us.Log(cfg.log_path)
    runs = read_runs(log, cfg)
    partitions = log.topic(cfg.topic).partitions
    log.close()
    out = {}

    def decide(outcomes: bool) -> float:
        st = PartitionStore(None, outbox=outcomes, bulk=True)
        t = time.perf_counter()
        for p, recs in runs:
            todo = recs
            while todo:
                try:
                    apply_run(st, cfg.topic, p, partitions, todo, cfg.ttl_ms)
                    break
                except us.RecordFailed as f:       # a poison record: skip it
                    todo = todo[f.index + 1:]
        return time.perf_counter() - t

    def run():
        out["base"] = getmany_rate(cfg, n)
        out["with"] = decide(True)
        out["without"] = decide(False)
    benchmark.pedantic(run, rounds=1, iterations=1)
    report.append(f"state machine's own Python over {n:,} events (apply_run, in memory, nothing "
                  f"written): {n / out['with']:,.0f} events/s building outcomes, "
                  f"{n / out['without']:,.0f} events/s without; same-run getmany "
                  f"{out['base']:,.0f} records/s")
