"""Helpers shared by the booking tests: running a BookingService in this
process until a condition holds, and reading topics."""
from __future__ import annotations

import asyncio
import os
import time

from unstoppable.booking import events as ev
from unstoppable.booking.readmodel import ReadModel, connect
from unstoppable.booking.service import BookingService, committed_offsets


def run_service(cfg, log, until, timeout: float = 30.0):
    """Run one BookingService (in this process) until ``until(db)`` is true."""
    async def main():
        stop = asyncio.Event()
        svc = BookingService(cfg)
        task = asyncio.create_task(svc.run(stop, log))
        db = None
        try:
            deadline = time.monotonic() + timeout
            # (the read model is opened once the service made it: a directory
            # of one file per partition, by default)
            while db is None or not until(db):
                if db is None and os.path.exists(cfg.db_path) and svc.__dict__.get("processor"):
                    db = connect(cfg.db_path)
                if task.done():
                    task.result()
                if time.monotonic() > deadline:
                    raise TimeoutError("the service did not get there in time")
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            if db is not None:
                db.close()
        return svc
    return asyncio.run(main())


def caught_up(log, cfg, *, timers: bool = True):
    """A predicate: every input record committed, the outbox empty, and (with
    ``timers``) no timer pending."""
    def pred(db):
        ends = log.topic(cfg.topic).end_offsets()
        com = committed_offsets(db, cfg.group, cfg.topic)
        if any(com.get(p, 0) != e for p, e in enumerate(ends)):
            return False
        n = db.execute("SELECT (SELECT COUNT(*) FROM outbox) + "
                       f"{'(SELECT COUNT(*) FROM timers)' if timers else '0'}").fetchone()[0]
        return n == 0
    return pred


def read_topic(log, name):
    """Every record of a topic as (partition, offset, key bytes, value bytes, headers)."""
    t = log.topic(name)
    out = []
    for p in range(t.partitions):
        part = t.partition(p)
        off = part.start_offset
        while off < part.end_offset:
            recs = part.read(off, 5000)
            out += [(p, r.offset, None if r.key is None else bytes(r.key),
                     None if r.value is None else bytes(r.value),
                     [(k, None if v is None else bytes(v)) for k, v in r.headers]) for r in recs]
            off = recs[-1].offset + 1
    return out


def outcomes(log, cfg):
    """Outcome events of the outcome topic, repeats (same event id) dropped."""
    seen, out = set(), []
    for _p, _o, _k, v, _h in read_topic(log, cfg.outcomes_topic):
        e = ev.CODEC.decode(v)
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def snapshot(path):
    db = connect(path)
    try:
        return ReadModel(db).snapshot()
    finally:
        db.close()
