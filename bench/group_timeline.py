"""How a booking-service consumer group forms: a timeline of N worker
processes started together on a prefilled booking log (the log of
``bench/test_booking_bench.py``).

Each worker process records, with wall-clock times, when it joined the
group, every change in the live members it saw, every partition it took
(``try_acquire``) and gave up (``release``), every load and drop of a
partition's in-memory state, and its first and last commit of each
partition. The parent prints the merged timeline (ms since the start),
how long each handed-over partition sat unowned, and the seconds to the
end of the log.

    BOOKING_EVENTS=300000 python bench/group_timeline.py [WORKERS] [DELAY_MS]

``DELAY_MS`` (optional) is passed as the consumer's
``initial_rebalance_delay_ms`` where the code has that option.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from test_booking_bench import _caught_up, make_booking_log  # noqa: E402

import unstoppable as us  # noqa: E402
from unstoppable.booking import service as svc  # noqa: E402
from unstoppable.booking.partitionstore import PartitionStore  # noqa: E402
from unstoppable.booking.readmodel import connect  # noqa: E402
from unstoppable.storage import membership as ms  # noqa: E402


def _traced_worker(cfg: dict, trace_path: str, delay_ms) -> None:
    f = open(trace_path, "a", buffering=1)
    pid = os.getpid()

    def note(what, **kw):
        f.write(json.dumps({"t": time.time(), "pid": pid, "what": what, **kw}) + "\n")

    M = ms.Membership
    init, refresh, acquire, release = M.__init__, M.refresh, M.try_acquire, M.release
    seen = {}

    def t_init(self, *a, **kw):
        init(self, *a, **kw)
        note("join", member=self.member_id)

    def t_refresh(self):
        live = refresh(self)
        ids = [m.member_id for m in live]
        if seen.get("ids") != ids:
            seen["ids"] = ids
            note("members", n=len(ids))
        return live

    def t_acquire(self, topic, p):
        ok = acquire(self, topic, p)
        if ok and (topic, p) not in seen.setdefault("held", set()):
            seen["held"].add((topic, p))
            note("take", p=p, epoch=self._epochs.get((topic, p)))
        return ok

    def t_release(self, topic, p):
        note("release-start", p=p)
        release(self, topic, p)
        seen.setdefault("held", set()).discard((topic, p))
        note("released", p=p)

    M.__init__, M.refresh, M.try_acquire, M.release = t_init, t_refresh, t_acquire, t_release
    load, drop = PartitionStore.load, PartitionStore.drop

    def t_load(self, db, tp):
        t = time.time()
        load(self, db, tp)
        note("state-load", p=tp.partition, ms=round((time.time() - t) * 1000, 1))

    def t_drop(self, tp):
        note("state-drop", p=tp.partition)
        drop(self, tp)

    PartitionStore.load, PartitionStore.drop = t_load, t_drop
    tx = us.Processor._transaction
    firsts: set = set()

    async def t_tx(self, tp, first, next_offset, body, *a, **kw):
        await tx(self, tp, first, next_offset, body, *a, **kw)
        if tp.partition not in firsts:
            firsts.add(tp.partition)
            note("first-commit", p=tp.partition, offset=first)
        seen.setdefault("last", {})[tp.partition] = time.time()

    us.Processor._transaction = t_tx
    import sqlite3
    waits = seen.setdefault("waits", {"BEGIN IMMEDIATE": 0.0, "COMMIT": 0.0})

    class _Timed(sqlite3.Connection):
        def execute(self, sql, *a):
            if sql in waits:
                t = time.perf_counter()
                try:
                    return super().execute(sql, *a)
                finally:
                    waits[sql] += time.perf_counter() - t
            return super().execute(sql, *a)
    connect = sqlite3.connect
    sqlite3.connect = lambda *a, **kw: connect(*a, factory=_Timed, **kw)
    if delay_ms is not None:
        C = us.Consumer
        cinit = C.__init__

        def c_init(self, *a, **kw):
            kw.setdefault("initial_rebalance_delay_ms", delay_ms)
            cinit(self, *a, **kw)
        C.__init__ = c_init
    note("process-start")
    try:
        svc.run_worker(cfg)
    finally:
        note("sqlite", **{k: round(v, 3) for k, v in seen["waits"].items()})
        for p, t in seen.get("last", {}).items():
            note("last-commit", p=p, at=t)


def main() -> None:
    n_workers = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else None
    n_target = int(os.environ.get("BOOKING_EVENTS", 300_000))
    base = os.environ.get("TIMELINE_DIR") or os.path.join(tempfile.gettempdir(), f"group-timeline-{n_target}")
    marker = os.path.join(base, "n")
    if os.path.exists(marker):
        cfg, n = make_cfg(base), int(open(marker).read())
    else:
        os.makedirs(base, exist_ok=True)
        cfg, n = make_booking_log(base, n_target)
        open(marker, "w").write(str(n))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(cfg.db_path + suffix):
            os.unlink(cfg.db_path + suffix)
    log = us.Log(cfg.log_path)
    ends = log.topic(cfg.topic).end_offsets()
    log.close()
    connect(cfg.db_path).close()
    trace = os.path.join(base, "trace.jsonl")
    if os.path.exists(trace):
        os.unlink(trace)
    ctx = mp.get_context("fork")
    t0 = time.time()
    procs = [ctx.Process(target=_traced_worker, args=(svc.config_dict(cfg), trace, delay))
             for _ in range(n_workers)]
    for p in procs:
        p.start()
    while not _caught_up(cfg, ends):
        assert all(p.is_alive() for p in procs), "a worker died"
        time.sleep(0.02)
    done = time.time() - t0
    cpu = []
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(30)
    rows = [json.loads(line) for line in open(trace)]
    rows.sort(key=lambda r: r["t"])
    pids = sorted({r["pid"] for r in rows}, key=lambda pid: min(r["t"] for r in rows if r["pid"] == pid))
    name = {pid: f"w{i + 1}" for i, pid in enumerate(pids)}
    print(f"{n:,} events, {n_workers} workers, initial_rebalance_delay_ms={delay}: "
          f"{done:.2f} s to the end of the log ({n / done:,.0f} events/s); CPU s per worker "
          f"{', '.join(f'{c:.2f}' for c in cpu)}; load average {os.getloadavg()[0]:.1f}")
    released_at: dict = {}
    gaps = []
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("t", "pid", "what")}
        if r["what"] == "last-commit":
            extra["at"] = f"{(r['at'] - t0) * 1000:.0f} ms"
        print(f"{(r['t'] - t0) * 1000:8.0f} ms  {name[r['pid']]}  {r['what']:<13} {extra if extra else ''}")
        if r["what"] == "released":
            released_at[r["p"]] = r["t"]
        elif r["what"] == "take" and r["p"] in released_at:
            gaps.append((r["p"], (r["t"] - released_at.pop(r["p"])) * 1000))
    if gaps:
        print("unowned between release and take (ms): "
              + ", ".join(f"p{p} {g:.0f}" for p, g in gaps))


def make_cfg(base: str):
    return svc.ServiceConfig(log_path=os.path.join(base, "log"), db_path=os.path.join(base, "live.db"),
                             ttl_ms=3_600_000, batch=5000, backoff_ms=1, max_attempts=2)


if __name__ == "__main__":
    main()
