"""Delivery futures and acks="fsync": what a task awaiting a record sees.

A task awaiting a DeliveryFuture sleeps on a private waiter that the batch
wakes in one loop callback; these tests pin down that it still behaves like an
asyncio future for the task (cancellation, errors, several awaiters), and
that acks="fsync" resolves only once the log says the record is durable.
"""
import asyncio

import pytest

import unstoppable as us
from unstoppable.errors import LogClosedError

from client_util import make_log, run


def test_cancelling_a_wait_is_prompt_and_never_cancels_the_write(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)

    async def main():
        # A long linger keeps the record in an open batch: its delivery is pending.
        async with us.Producer(log, "t", linger_ms=60_000, batch_bytes=1 << 20) as p:
            fut = await p.send(b"v")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(fut, 0.05)
            waited = loop.time() - t0
            # A second task awaiting the same record is not disturbed.
            other = asyncio.ensure_future(_await(fut))
            victim = asyncio.ensure_future(_await(fut))
            await asyncio.sleep(0.01)
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            assert not other.done() and not fut.done()
            await p.flush()
            return waited, await fut, await other

    waited, md, md2 = run(main())
    assert waited < 1.0
    assert md == md2 and md.offset == 0
    assert bytes(log.topic("t").partition(0).read(0, 1)[0].value) == b"v"
    log.close()


async def _await(fut):
    return await fut


def test_a_failed_delivery_raises_in_every_awaiting_task(tmp_path):
    log = make_log(tmp_path / "log", partitions=1, max_record_bytes=1000)

    async def main():
        async with us.Producer(log, "t", linger_ms=60_000) as p:
            ok = await p.send(b"fine")
            # Refused before it is accepted: send raises, nothing is buffered.
            with pytest.raises(us.RecordTooLargeError):
                await p.send(b"x" * 5000)
            log.delete_topic("t")  # the write will fail: the topic is gone
            tasks = [asyncio.ensure_future(_await(ok)) for _ in range(3)]
            await asyncio.sleep(0)
            await p.flush()
            return await asyncio.gather(*tasks, return_exceptions=True), ok

    results, ok = run(main())
    assert len(results) == 3
    assert all(isinstance(r, us.UnstoppableError) for r in results), results
    assert ok.done() and isinstance(ok.exception(), us.UnstoppableError)
    log.close()


def test_fsync_acks_resolve_only_when_durable(tmp_path):
    log = make_log(tmp_path / "log", partitions=4)
    parts = list(log.topic("t"))
    seen = []

    async def sender(p, i):
        for k in range(50):
            md = await (await p.send(b"%d-%d" % (i, k)))
            # Resolved means durable: the log's own durable offset covers it.
            seen.append(parts[md.partition].durable_offset > md.offset)

    async def main():
        async with us.Producer(log, "t", acks="fsync") as p:
            await asyncio.gather(*(sender(p, i) for i in range(40)))

    run(main())
    assert len(seen) == 2000 and all(seen)
    assert sum(p.end_offset for p in parts) == 2000
    log.close()


def test_many_awaiters_of_fsync_records_in_order_per_partition(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)

    async def main():
        async with us.Producer(log, "t", acks="fsync", batch_bytes=512) as p:
            futs = [await p.send(b"r%d" % i, partition=i % 2) for i in range(3000)]
            done_order = []
            for f in futs:
                f.add_done_callback(lambda f: done_order.append(f.result()))
            mds = await asyncio.gather(*futs)
            return mds, done_order

    mds, done_order = run(main())
    for part in (0, 1):
        offs = [m.offset for m in mds if m.partition == part]
        assert offs == list(range(1500))
        # Done callbacks of one partition run in offset order.
        cb = [m.offset for m in done_order if m.partition == part]
        assert cb == sorted(cb) and len(cb) == 1500
    log.close()


def test_durability_requests_are_answered_when_the_log_closes(tmp_path):
    """Partition.when_durable: answered with None once durable, or with an
    error when the partition is closed first (never left hanging)."""
    log = make_log(tmp_path / "log", partitions=1)
    p = log.topic("t").partition(0)
    p.append([b"a", b"b"])
    got = []
    p.when_durable(2, got.append)
    with pytest.raises(ValueError, match="past the end"):
        p.when_durable(3, got.append)
    log.close()  # syncs, then stops the sync thread: every request has its answer
    assert got == [None]
    late = []
    log._group_commit.request(p, 10, late.append)  # after close: answered at once
    assert len(late) == 1 and isinstance(late[0], LogClosedError)


_INTERRUPTED = r"""
import asyncio, sys
import unstoppable as us

log = us.Log(sys.argv[1])
log.create_topic("t", partitions=1)

async def first(fut):
    await fut
    raise KeyboardInterrupt  # escapes the loop from inside the batch's wake-ups

async def second(fut):
    await fut

async def main():
    p = us.Producer(log, "t", linger_ms=60_000)
    await p.start()
    fut = await p.send(b"x")
    tasks = [asyncio.ensure_future(first(fut)), asyncio.ensure_future(second(fut))]
    await asyncio.sleep(0)
    await p.flush()
    await asyncio.sleep(30)

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted, and asyncio.run finished its clean-up")
"""


def test_an_interrupt_in_one_woken_task_does_not_strand_the_others(tmp_path):
    """A KeyboardInterrupt raised by one task that a batch wakes stops the
    loop; the tasks after it in that batch must still wake, or asyncio.run's
    clean-up (cancel every task, then wait for them) would wait forever."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _INTERRUPTED, str(tmp_path / "log")],
                         capture_output=True, text=True, timeout=60)
    assert "interrupted, and asyncio.run finished its clean-up" in out.stdout, out.stderr


def test_fsync_rounds_run_on_the_loop_with_at_most_two_in_flight(tmp_path):
    """The producer's group commit (_LoopCommitter): each acknowledged
    record is below the partition's on-disk checkpoint when its task
    resumes, rounds overlap (at most two), and a round covers several
    partitions' writes."""
    from unstoppable.client.embedded import _LoopCommitter
    log = make_log(tmp_path / "log", partitions=8)
    parts = list(log.topic("t"))
    seen, most, sizes = [], [0], []
    real_start = _LoopCommitter._start

    def spy(self):
        before = len(self._busy)
        real_start(self)
        if len(self._busy) > before:
            sizes.append(len(self._busy[next(reversed(self._busy))]))
        most[0] = max(most[0], len(self._busy))

    async def sender(p, i):
        for k in range(40):
            md = await (await p.send(b"%d-%d" % (i, k), partition=(i + k) % 8))
            seen.append(parts[md.partition].durable_offset > md.offset)

    async def main():
        async with us.Producer(log, "t", acks="fsync") as p:
            await asyncio.gather(*(sender(p, i) for i in range(200)))

    _LoopCommitter._start = spy
    try:
        run(main())
    finally:
        _LoopCommitter._start = real_start
    assert len(seen) == 8000 and all(seen)
    assert most[0] == 2, most
    assert max(sizes) > 1 and sum(sizes) < 8000, sizes  # rounds are shared
    log.close()


def test_fsync_producers_leave_no_threads_or_descriptors_behind(tmp_path):
    """Each producer's group commit stops its sync threads and closes its
    pipes when the producer closes, even while the loop runs on."""
    import gc
    import os
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc")
    log = make_log(tmp_path / "log", partitions=4)

    async def one():
        async with us.Producer(log, "t", acks="fsync") as p:
            futs = [await p.send(b"x%d" % i, partition=i % 4) for i in range(300)]
            await asyncio.gather(*futs)

    async def main():
        await one()  # warm-up: the client's thread pool, the log's files
        gc.collect()
        threads = len(os.listdir("/proc/self/task"))
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(15):
            await one()
        gc.collect()
        return threads, fds, len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))

    threads, fds, threads_after, fds_after = run(main())
    assert threads_after <= threads and fds_after <= fds, (threads, threads_after, fds, fds_after)
    log.close()


def test_the_await_protocol_of_a_delivery_future(tmp_path):
    """DeliveryFuture.__await__ (compiled, _core.delivery): a settled record's
    metadata comes back without suspending, through the am_send slot that a
    coroutine's await uses and through plain iteration; a pending one yields
    a waiter the task sleeps on; a failed one raises its error either way."""
    import types
    log = make_log(tmp_path / "log", partitions=1)

    async def main():
        async with us.Producer(log, "t", linger_ms=60_000) as p:
            pending = await p.send(b"a")
            it = pending.__await__()
            w = next(it)                      # pending: the waiter is yielded
            assert w._asyncio_future_blocking and not w.done()
            assert w.get_loop() is asyncio.get_running_loop()
            with pytest.raises(asyncio.InvalidStateError):
                pending.result()
            with pytest.raises(TypeError, match="non-None"):
                pending.__await__().send(1)   # a fresh wait takes only None
            await p.flush()
            assert w.done() and w.result() is None
            with pytest.raises(StopIteration) as stop:
                next(it)                      # resumed: the metadata, not unpacked
            md = stop.value.value
            assert isinstance(md, us.RecordMetadata) and md == pending.result()
            assert (md.topic, md.partition, md.offset) == ("t", 0, 0)

            # Settled before the await: a coroutine finishes on its first step.
            coro = _await(pending)
            with pytest.raises(StopIteration) as stop:
                coro.send(None)
            assert stop.value.value == md

            @types.coroutine
            def old_style(fut):
                return (yield from fut)
            assert await old_style(pending) == md
            assert await asyncio.wait_for(pending, 1) == md

            # A failed record raises from the first step as well.
            doomed = await p.send(b"b")
            log.delete_topic("t")
            await p.flush()
            assert doomed.done()
            coro = _await(doomed)
            with pytest.raises(us.UnstoppableError) as err:
                coro.send(None)
            assert err.value is doomed.exception()
            with pytest.raises(us.UnstoppableError):
                next(doomed.__await__())

    run(main())
    log.close()


def test_awaiting_settled_futures_leaks_nothing(tmp_path):
    """The compiled am_send hands each result over with one reference: 100k
    awaits of a settled future, and 20k of a failed one, allocate nothing
    that stays."""
    import gc
    import tracemalloc
    log = make_log(tmp_path / "log", partitions=1)

    async def spin(fut, n, catch):
        for _ in range(n):
            try:
                await fut
            except catch:
                pass

    async def main():
        async with us.Producer(log, "t", linger_ms=60_000) as p:
            ok = await p.send(b"a")
            await p.flush()
            bad = await p.send(b"b")
            log.delete_topic("t")
            await p.flush()
            bad.exception().__traceback__ = None
            await spin(ok, 1000, ())
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            await spin(ok, 100_000, ())
            gc.collect()
            grown_ok = tracemalloc.get_traced_memory()[0] - before
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20):
                await spin(bad, 1000, us.UnstoppableError)
                bad.exception().__traceback__ = None  # each raise adds its frames
            gc.collect()
            grown_bad = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            return grown_ok, grown_bad

    grown_ok, grown_bad = run(main())
    # A leaked RecordMetadata is 72 bytes: 100k of them would be 7 MB.
    assert grown_ok < 100_000, grown_ok
    assert grown_bad < 100_000, grown_bad
    log.close()
