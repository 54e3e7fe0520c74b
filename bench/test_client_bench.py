"""Client benchmarks (issue 3): the asyncio Producer and Consumer, each figure
beside the same-run baseline of a naive buffered-file loop
(``f.write(len); f.write(payload)`` for 1M 100-byte events, and its read-back).

Run with:  python -m pytest bench/test_client_bench.py -s

Workload: 100-byte values, 8 partitions, acks="written" unless stated.
The machine has 2 cores shared with other work: compare ratios, not absolutes.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import time

import pytest

import unstoppable as us
from conftest import make_values, naive_file_loop

N = 1_000_000
PARTITIONS = 8
SPAWN = mp.get_context("spawn")


@pytest.fixture(scope="module")
def values():
    return make_values(N)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, values):
    """Naive loop rates (append/s, read/s), re-measured by each benchmark too."""
    d = tmp_path_factory.mktemp("naive")
    return naive_file_loop(str(d / "naive.bin"), values)


def _naive(tmp_path, values):
    return naive_file_loop(str(tmp_path / "naive.bin"), values)


def _fresh_log(path):
    shutil.rmtree(path, ignore_errors=True)
    log = us.Log(path)
    log.create_topic("bench", partitions=PARTITIONS)
    return log


def test_send_loop(benchmark, tmp_path, values, report):
    """``await producer.send(value)`` in a loop, keyless (sticky partitioning)."""
    naive = []
    state = {}

    def setup():
        if "log" in state:
            state.pop("log").close()
        naive.append(_naive(tmp_path, values)[0])
        state["log"] = _fresh_log(tmp_path / "log")
        os.sync()

    def run():
        async def main():
            async with us.Producer(state["log"], "bench") as p:
                send = p.send
                for v in values:
                    await send(v)
        asyncio.run(main())

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    assert sum(state["log"].topic("bench").end_offsets()) == N
    state.pop("log").close()
    med = statistics.median(benchmark.stats.stats.data)
    base = statistics.median(naive)
    benchmark.extra_info.update(events_per_s=N / med, naive_events_per_s=base)
    report.append(f"producer send loop (1M x 100 B, 8 partitions, acks=written): {N / med / 1e6:.2f} M events/s; "
                  f"naive file loop same run: {base / 1e6:.2f} M/s -> {N / med / base:.0%}; aim >= 1 M/s")


def test_send_loop_keyed(benchmark, tmp_path, values, report):
    """The same with a key per record (xxh64 partitioner)."""
    keys = [b"user-%d" % (i % 10007) for i in range(N)]
    state = {}

    def setup():
        if "log" in state:
            state.pop("log").close()
        state["log"] = _fresh_log(tmp_path / "log")

    def run():
        async def main():
            async with us.Producer(state["log"], "bench") as p:
                send = p.send
                for k, v in zip(keys, values):
                    await send(v, k)
        asyncio.run(main())

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    state.pop("log").close()
    med = statistics.median(benchmark.stats.stats.data)
    base = _naive(tmp_path, values)[0]
    report.append(f"producer send loop with keys: {N / med / 1e6:.2f} M events/s; "
                  f"naive file loop same run: {base / 1e6:.2f} M/s -> {N / med / base:.0%}")


RUN = 4_700    # records per send_batch: a booking worker's run of outcomes


@pytest.fixture(scope="module")
def outcome_runs():
    """1M (key, value) pairs shaped like the booking service's outcomes
    (30-byte seat keys, 120-byte values) in runs of RUN. The keys of a run
    all hash to one partition (run r: partition r % 8), as a booking
    worker's do: it publishes one input partition's run at a time, keyed by
    the seat its input was keyed by."""
    from unstoppable._core.hashing import xxh64_partition
    vals = make_values(N, size=120, seed=2)
    pools: list = [[] for _ in range(PARTITIONS)]
    j = 0
    while min(len(p) for p in pools) < N // PARTITIONS + RUN:
        k = b"seat-%025d" % j
        j += 1
        pools[xxh64_partition(k, PARTITIONS)].append(k)
    runs = []
    for r, start in enumerate(range(0, N, RUN)):
        pool = pools[r % PARTITIONS]
        runs.append([(pool.pop(), vals[i]) for i in range(start, min(N, start + RUN))])
    return runs


def test_send_batch_pairs(benchmark, tmp_path, outcome_runs, report):
    """``send_batch(run, per_batch=True)`` then ``flush()`` per run of
    (key, value) pairs, as the booking worker publishes its outcomes; beside
    the same run's raw ``Partition.append`` of each run as one call (the
    log's own floor for these records: one encode and one write per run)
    and of each run in lists of 99 records (a 16 KiB batch each, one append
    per batch)."""
    state = {}
    raw_one, raw_99 = [], []

    def raw(chunk):
        log = _fresh_log(tmp_path / "raw")
        parts = [log.topic("bench").partition(p) for p in range(PARTITIONS)]
        os.sync()
        t0 = time.perf_counter()
        for r, run_ in enumerate(outcome_runs):
            part = parts[r % PARTITIONS]
            for s in range(0, len(run_), chunk):
                part.append(run_[s:s + chunk])
        dt = time.perf_counter() - t0
        log.close()
        return N / dt

    def setup():
        if "log" in state:
            state.pop("log").close()
        raw_one.append(raw(RUN))
        raw_99.append(raw(99))
        state["log"] = _fresh_log(tmp_path / "log")
        os.sync()

    def run():
        async def main():
            async with us.Producer(state["log"], "bench") as p:
                for run_ in outcome_runs:
                    futs = await p.send_batch(run_, per_batch=True)
                    await p.flush()
                    for f in futs:
                        f.result()
        asyncio.run(main())

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    log = state.pop("log")
    ends = log.topic("bench").end_offsets()
    log.close()
    assert sum(ends) == N
    med = statistics.median(benchmark.stats.stats.data)
    one, b99 = statistics.median(raw_one), statistics.median(raw_99)
    benchmark.extra_info.update(records_per_s=N / med, raw_append_run_per_s=one, raw_append_99_per_s=b99)
    report.append(f"producer send_batch of (key, value) pairs (1M x 30/120 B, runs of {RUN}, per_batch, "
                  f"flush per run): {N / med / 1e6:.2f} M records/s; raw Partition.append same run: "
                  f"{one / 1e6:.2f} M/s a run per call ({N / med / one:.0%}), {b99 / 1e6:.2f} M/s "
                  f"99 records per call")


@pytest.fixture(scope="module")
def filled(tmp_path_factory, values):
    d = tmp_path_factory.mktemp("filled") / "log"
    log = _fresh_log(d)

    async def main():
        async with us.Producer(log, "bench") as p:
            for v in values:
                await p.send(v)
    asyncio.run(main())
    log.close()
    return d


def test_consume_async_for(benchmark, filled, tmp_path, values, report):
    log = us.Log(filled)
    naive = []

    def run():
        async def main():
            n = 0
            async with us.Consumer(log, "bench") as c:
                async for r in c:
                    n += 1
                    if n == N:
                        break
        asyncio.run(main())

    def setup():
        naive.append(_naive(tmp_path, values)[1])

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    log.close()
    med = statistics.median(benchmark.stats.stats.data)
    base = statistics.median(naive)
    benchmark.extra_info.update(events_per_s=N / med, naive_read_per_s=base)
    report.append(f"consumer `async for` (1M x 100 B): {N / med / 1e6:.2f} M events/s; "
                  f"naive file read loop same run: {base / 1e6:.2f} M/s -> {N / med / base:.0%}; aim >= 1 M/s")


@pytest.mark.parametrize("max_records", [500, 2000])
def test_consume_getmany(benchmark, filled, tmp_path, values, report, max_records):
    log = us.Log(filled)
    naive = []

    def run():
        async def main():
            n = 0
            async with us.Consumer(log, "bench", max_poll_records=max_records) as c:
                while n < N:
                    for recs in (await c.getmany(max_records=max_records)).values():
                        n += len(recs)
        asyncio.run(main())

    def setup():
        naive.append(_naive(tmp_path, values)[1])

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    log.close()
    med = statistics.median(benchmark.stats.stats.data)
    base = statistics.median(naive)
    benchmark.extra_info.update(events_per_s=N / med, naive_read_per_s=base)
    report.append(f"consumer getmany(max_records={max_records}): {N / med / 1e6:.2f} M events/s; "
                  f"naive file read loop same run: {base / 1e6:.2f} M/s -> {N / med / base:.0%}; aim >= 3 M/s")


FSYNC_N = 300_000
SENDERS = 1000


@pytest.mark.parametrize("batch_bytes", [16384, 65536])
def test_fsync_acks_with_1000_concurrent_senders(benchmark, tmp_path, values, report, batch_bytes):
    """1,000 tasks, each awaiting the delivery of its record (acks="fsync")
    before sending the next: group commit at the producer and in storage.
    16384 is the default batch_bytes; 65536 shows what fewer, larger fsyncs buy."""
    state = {}

    def setup():
        if "log" in state:
            state.pop("log").close()
        state["log"] = _fresh_log(tmp_path / "log")
        os.sync()

    def run():
        async def sender(p, vals):
            for v in vals:
                await (await p.send(v))

        async def main():
            async with us.Producer(state["log"], "bench", acks="fsync", batch_bytes=batch_bytes) as p:
                per = FSYNC_N // SENDERS
                await asyncio.gather(*(sender(p, values[i * per:(i + 1) * per]) for i in range(SENDERS)))
        asyncio.run(main())

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    log = state.pop("log")
    assert sum(log.topic("bench").end_offsets()) == FSYNC_N
    assert all(p.durable_offset == p.end_offset for p in log.topic("bench"))
    log.close()
    med = statistics.median(benchmark.stats.stats.data)
    base = _naive(tmp_path, values)[0]
    benchmark.extra_info.update(events_per_s=FSYNC_N / med)
    report.append(f"acks=fsync, {SENDERS} concurrent senders ({FSYNC_N} events, batch_bytes={batch_bytes}): "
                  f"{FSYNC_N / med / 1e3:.0f} k events/s "
                  f"(every one fdatasync'ed before its future resolved); naive (unsynced) file loop same run: "
                  f"{base / 1e6:.2f} M/s; aim >= 300 k/s")


# -- latency across processes

LAT_N = 10_000


def _latency_producer(path, n, ready):
    """Send n records, one at a time with linger_ms=0, each carrying its send time."""
    async def main():
        log = us.Log(path)
        async with us.Producer(log, "lat", linger_ms=0) as p:
            ready.wait(30)
            for i in range(n):
                await p.send(time.monotonic_ns().to_bytes(8, "little") + b"x" * 92)
                await asyncio.sleep(0)      # the batch is written on the next loop iteration
                time.sleep(0.0002)          # about 4,000 events/s: one record per batch
        log.close()
    asyncio.run(main())


def _latency_consumer(path, n, ready, out):
    """Consume n records as they arrive and report each one's latency (ns)."""
    async def main():
        log = us.Log(path)
        lat = []
        async with us.Consumer(log, "lat", auto_offset_reset="latest") as c:
            ready.set()
            async for r in c:
                lat.append(time.monotonic_ns() - int.from_bytes(bytes(r.value[:8]), "little"))
                if len(lat) == n:
                    break
        log.close()
        out.put(lat)
    asyncio.run(main())


def test_latency_producer_to_consumer_across_processes(benchmark, tmp_path, report):
    """Producer and consumer each in a fresh process (this one holds the
    other benchmarks' 1M values, whose garbage-collector passes would show up
    as latency spikes that have nothing to do with the client)."""
    path = str(tmp_path / "log")
    with us.Log(path) as log:
        log.create_topic("lat", partitions=1)
    lat = []

    def run():
        # Start clean: writeback of the earlier benchmarks' hundreds of MB
        # would otherwise throttle these small writes (dirty-page balancing).
        os.sync()
        ready, out = SPAWN.Event(), SPAWN.Queue()
        cons = SPAWN.Process(target=_latency_consumer, args=(path, LAT_N, ready, out))
        cons.start()
        prod = SPAWN.Process(target=_latency_producer, args=(path, LAT_N, ready))
        prod.start()
        lat.extend(out.get(timeout=120))
        cons.join(30)
        prod.join(30)

    benchmark.pedantic(run, rounds=1, iterations=1)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(len(lat) * f))] / 1e6  # noqa: E731
    benchmark.extra_info.update(p50_ms=q(0.5), p99_ms=q(0.99), p999_ms=q(0.999), max_ms=lat[-1] / 1e6)
    report.append(f"latency producer -> consumer in another process ({len(lat)} events, linger_ms=0, "
                  f"acks=written): p50 {q(0.5):.3f} ms, p99 {q(0.99):.3f} ms, p99.9 {q(0.999):.3f} ms, "
                  f"max {lat[-1] / 1e6:.2f} ms; aim p99 <= 2 ms")
