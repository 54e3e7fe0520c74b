"""Backpressure: a producer far faster than its disk stays within
max_buffer_bytes, and each mode (Block, BlockWithTimeout, FailImmediately)
behaves as specified without losing anything already accepted."""
import asyncio
import time

import pytest

import unstoppable as us

from client_util import SlowDiskBackend, make_log, read_all, run

from unstoppable._core.batch import RECORD_MAX_OVERHEAD_PLAIN  # noqa: E402

VALUE = b"v" * 1000
# The producer's per-record size bound for a keyless value (csrc/batch.h).
BOUND = len(VALUE) + RECORD_MAX_OVERHEAD_PLAIN


def _check_log_holds(log, accepted):
    got = [bytes(r.value) for recs in read_all(log, "t").values() for r in recs]
    assert sorted(got) == sorted(accepted)
    assert len(got) == len(accepted)


def test_block_keeps_memory_bounded_and_loses_nothing(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)
    backend = SlowDiskBackend(log, delay=0.01)   # 100 writes/s at most
    max_buf = 64 * 1024

    async def main():
        outstanding_peak = 0
        futs, accepted = [], []
        async with us.Producer(backend, "t", max_buffer_bytes=max_buf, batch_bytes=8192) as p:
            for i in range(3000):
                v = b"%06d" % i + VALUE[6:]
                futs.append(await p.send(v))
                accepted.append(v)
                # Independent of the producer's own counter: records accepted
                # but not yet written, times their size bound.
                if i % 10 == 0:
                    outstanding = sum(not f.done() for f in futs[-200:]) * BOUND
                    outstanding_peak = max(outstanding_peak, outstanding)
                assert p.buffered_bytes <= max_buf
        assert all(f.done() and f.exception() is None for f in futs)
        return outstanding_peak, accepted

    t0 = time.perf_counter()
    peak, accepted = run(main())
    assert peak <= max_buf
    assert peak > max_buf // 2          # the buffer really filled: the disk was the limit
    assert backend.calls >= 3000 * BOUND // max_buf  # many write rounds, not one
    assert time.perf_counter() - t0 < 30
    _check_log_holds(log, accepted)
    log.close()


def test_block_waits_without_busy_waiting(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    backend = SlowDiskBackend(log, delay=0.6)

    async def main():
        async with us.Producer(backend, "t", max_buffer_bytes=4 * BOUND, batch_bytes=2 * BOUND) as p:
            for _ in range(4):
                await p.send(VALUE)
            wall, cpu = time.perf_counter(), time.process_time()
            f = await p.send(VALUE)           # blocks until the slow write completes
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            await f
            return wall, cpu

    wall, cpu = run(main())
    assert wall > 0.3
    assert cpu < 0.1 * wall + 0.02, f"blocked send used {cpu:.3f}s CPU in {wall:.3f}s"
    log.close()


def test_block_with_timeout_raises_after_the_timeout_and_keeps_what_was_accepted(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    backend = SlowDiskBackend(log, delay=1.0)

    async def main():
        accepted, futs = [], []
        async with us.Producer(backend, "t", max_buffer_bytes=5 * BOUND,
                               backpressure=us.BlockWithTimeout(0.1)) as p:
            for i in range(5):
                v = b"%d" % i + VALUE[1:]
                futs.append(await p.send(v))
                accepted.append(v)
            t0 = time.perf_counter()
            with pytest.raises(us.BufferFullError, match="BlockWithTimeout"):
                await p.send(VALUE)
            waited = time.perf_counter() - t0
            # Once the write completes there is room again.
            await asyncio.gather(*futs)
            futs.append(await p.send(b"after"))
            accepted.append(b"after")
        return waited, accepted

    waited, accepted = run(main())
    assert 0.08 <= waited < 0.6
    _check_log_holds(log, accepted)
    log.close()


def test_fail_immediately_raises_at_once_and_keeps_what_was_accepted(tmp_path):
    log = make_log(tmp_path / "log", partitions=3)
    backend = SlowDiskBackend(log, delay=0.05)

    async def main():
        accepted, refused = [], 0
        async with us.Producer(backend, "t", max_buffer_bytes=20 * BOUND,
                               backpressure=us.FailImmediately()) as p:
            for i in range(400):
                v = b"%05d" % i + VALUE[5:]
                t0 = time.perf_counter()
                try:
                    await p.send(v)
                    accepted.append(v)
                except us.BufferFullError as e:
                    assert time.perf_counter() - t0 < 0.05
                    assert "FailImmediately" in str(e)
                    refused += 1
                    await asyncio.sleep(0.002)
                assert p.buffered_bytes <= 20 * BOUND
        return accepted, refused

    accepted, refused = run(main())
    assert refused > 0 and len(accepted) > 20
    _check_log_holds(log, accepted)
    log.close()


def test_a_record_larger_than_the_whole_buffer_is_refused_clearly(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)

    async def main():
        async with us.Producer(log, "t", max_buffer_bytes=100) as p:
            with pytest.raises(us.RecordTooLargeError, match="max_buffer_bytes=100"):
                await p.send(b"x" * 500)
            return await (await p.send(b"small"))

    assert run(main()).offset == 0
    log.close()


def test_fsync_acks_on_the_real_disk_stay_within_the_buffer(tmp_path):
    """No simulated slowness: fsync acks with a tight send loop that never
    awaits delivery. The buffer bound holds and everything lands."""
    log = make_log(tmp_path / "log", partitions=4)
    max_buf = 256 * 1024

    async def main():
        futs = []
        async with us.Producer(log, "t", acks="fsync", max_buffer_bytes=max_buf) as p:
            for i in range(20_000):
                futs.append(await p.send(b"%08d" % i + VALUE[:92]))
                assert p.buffered_bytes <= max_buf
        return futs

    futs = run(main())
    assert all(f.done() for f in futs)
    assert sum(log.topic("t").end_offsets()) == 20_000
    for p in log.topic("t"):
        assert p.durable_offset == p.end_offset
    log.close()


def test_blocked_senders_are_served_in_order(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    backend = SlowDiskBackend(log, delay=0.02)
    order = []

    async def sender(p, i):
        await p.send(b"%03d" % i + VALUE[3:])
        order.append(i)

    async def main():
        async with us.Producer(backend, "t", max_buffer_bytes=3 * BOUND) as p:
            tasks = []
            for i in range(30):
                tasks.append(asyncio.ensure_future(sender(p, i)))
                await asyncio.sleep(0)
            await asyncio.gather(*tasks)

    run(main())
    assert order == list(range(30))
    vals = [bytes(r.value)[:3] for r in log.topic("t").partition(0).read(0, 100)]
    assert vals == [b"%03d" % i for i in range(30)]
    log.close()


def test_a_send_loop_that_never_yields_keeps_no_written_batches_alive(tmp_path):
    """With acks="written" batches are written as they fill; nothing of a
    written batch may stay referenced while the loop never yields."""
    import tracemalloc
    log = make_log(tmp_path / "log", partitions=8)
    value = b"v" * 100

    async def main():
        async with us.Producer(log, "t") as p:
            tracemalloc.start()
            for _ in range(150_000):
                await p.send(value)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        return peak

    peak = run(main())
    assert peak < 600_000, f"{peak} bytes traced during 150k sends"
    assert sum(log.topic("t").end_offsets()) == 150_000
    log.close()
