"""The booking decisions' floor, before and after the compiled fast path,
in the same run: every record of a prefilled booking log (the demo's mix, see
``test_booking_bench.make_booking_log``; read beforehand) decided against
the in-memory state of a ``PartitionStore`` (bulk mode: nothing written),

* by the reference path, ``decide_run(reference=True)``: ``BookingEvent.FromString``,
  ``validate``, ``machine.apply``, outcome messages built and serialized;
* by the fast path, ``decide_run`` (``booking/_decide.pyx``);

each with the outcome messages (as a worker) and without (as the rebuild),
in alternating rounds, beside the same-run ``getmany`` rate over the same log. The collector is
off while deciding, in every variant (the rebuild runs so; workers freeze
the survivors of each full collection, see ``service._freeze_survivors``).
The fast path's final state, counters and outcome bytes must equal the
reference's.

    BOOKING_DECIDE_EVENTS=300000 python -m pytest -q -s bench/test_booking_decide_bench.py
"""
from __future__ import annotations

import gc
import os
import time

import pytest

import unstoppable as us
from unstoppable.booking.partitionstore import PartitionStore
from unstoppable.booking.service import decide_run

from test_booking_bench import getmany_rate, make_booking_log, read_runs

N_TARGET = int(os.environ.get("BOOKING_DECIDE_EVENTS", 300_000))
ROUNDS = int(os.environ.get("BOOKING_DECIDE_ROUNDS", 3))


@pytest.fixture(scope="module")
def decide_log(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("booking-decide"))
    cfg, n = make_booking_log(d, N_TARGET)
    log = us.Log(cfg.log_path)
    runs = read_runs(log, cfg)
    parts = log.topic(cfg.topic).partitions
    yield cfg, n, runs, parts
    log.close()


def _decide(cfg, runs, parts: int, outcomes: bool, reference: bool):
    """Decide every run (a failing record is skipped, as once dead-lettered);
    returns (seconds, store, outcome values)."""
    st = PartitionStore(None, outbox=outcomes, bulk=True)
    values: list = []
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        for p, recs in runs:
            todo = recs
            while todo:
                f = decide_run(st, cfg.topic, p, parts, todo, cfg.ttl_ms, reference=reference)
                values += st._outbox
                st.flush()
                if f is None:
                    break
                todo = todo[f.index + 1:]
        s = time.perf_counter() - t
    finally:
        gc.enable()
    return s, st, values


def _state(st: PartitionStore):
    return ({p: (part.seats, part.bookings, part.logs, part.timers) for p, part in st.parts.items()},
            st._bulk_counts)


def test_decisions_floor_reference_vs_fast_path(benchmark, decide_log, report):
    cfg, n, runs, parts = decide_log
    out: dict = {}

    def run():
        out["base"] = getmany_rate(cfg, n)
        # Alternating rounds; the best of each (the least disturbed by the
        # other processes on the machine) is reported, with the worst.
        for rnd in range(ROUNDS):
            for outcomes in (True, False):
                states = []
                for reference in (True, False):
                    s, st, values = _decide(cfg, runs, parts, outcomes, reference)
                    out.setdefault((outcomes, reference), []).append(s)
                    if rnd == 0:
                        states.append((_state(st), values))
                    del st, values
                if states:
                    assert states[0] == states[1]
                del states
    benchmark.pedantic(run, rounds=1, iterations=1)
    lines = [f"booking decisions over {n:,} events, in memory, nothing written, collector off, "
             f"best (worst) of {ROUNDS}; same-run getmany {out['base']:,.0f} records/s:"]
    for outcomes in (True, False):
        ref, fast = out[(outcomes, True)], out[(outcomes, False)]
        what = "building outcomes" if outcomes else "no outcomes     "
        lines.append(f"  {what}: reference {n / min(ref):,.0f} ({n / max(ref):,.0f}) events/s, "
                     f"{min(ref) / n * 1e6:.2f} us/event; fast path {n / min(fast):,.0f} "
                     f"({n / max(fast):,.0f}) events/s, {min(fast) / n * 1e6:.2f} us/event; "
                     f"{min(ref) / min(fast):.1f}x")
    report.append("\n".join(lines))
