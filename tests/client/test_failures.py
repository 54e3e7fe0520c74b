"""Failures reach the application: a full disk is retried until space returns
(or the delivery timeout), permanent errors fail the delivery futures, and a
failure nobody looked at is reported rather than dropped silently."""
import asyncio
import gc
import os
import resource
import signal

import pytest

import unstoppable as us

from client_util import SPAWN, make_log, run


def _disk_full_child(path, q):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death
    log = us.Log(path)
    log.topic("t").partition(0)  # partitions open (and create their files) on first use
    seg = os.path.join(path, "topics", "t", "0", "00000000000000000000.log")
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out = {}

    async def phase1():
        # The disk stays full: the batch that does not fit fails after the
        # delivery timeout, with the disk-full error as its cause.
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(seg) + 20_000, hard))
        async with us.Producer(log, "t", retry_backoff_ms=10, delivery_timeout_ms=300,
                               batch_bytes=4096) as p:
            futs = [await p.send(b"a%05d" % i + b"x" * 994) for i in range(60)]
            res = await asyncio.gather(*futs, return_exceptions=True)
        out["phase1"] = [type(r).__name__ if isinstance(r, BaseException) else "ok" for r in res]
        out["cause"] = next((type(r.__cause__).__name__ for r in res if isinstance(r, BaseException)), None)

    async def phase2():
        # The disk is full for a while, then space returns: nothing is lost.
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(seg) + 20_000, hard))
        async with us.Producer(log, "t", retry_backoff_ms=10, delivery_timeout_ms=30_000,
                               batch_bytes=4096) as p:
            futs = [await p.send(b"b%05d" % i + b"x" * 994) for i in range(60)]
            await asyncio.sleep(0.3)
            out["done_while_full"] = sum(f.done() for f in futs)
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            metas = [await f for f in futs]
        out["offsets"] = [m.offset for m in metas]

    asyncio.run(phase1())
    asyncio.run(phase2())
    out["values"] = [bytes(r.value[:6]) for r in log.topic("t").partition(0).read(0, 1000)]
    log.close()
    q.put(out)


def test_a_full_disk_is_retried_until_space_returns_or_the_delivery_timeout(tmp_path):
    path = str(tmp_path / "log")
    make_log(path, partitions=1).close()
    q = SPAWN.Queue()
    proc = SPAWN.Process(target=_disk_full_child, args=(path, q))
    proc.start()
    out = q.get(timeout=60)
    proc.join(10)
    assert proc.exitcode == 0
    p1 = out["phase1"]
    fitted = p1.count("ok")
    assert 0 < fitted < 60
    assert p1 == ["ok"] * fitted + ["DeliveryTimeoutError"] * (60 - fitted)  # a prefix landed
    assert out["cause"] == "DiskFullError"
    assert out["done_while_full"] < 60
    assert out["offsets"] == list(range(fitted, fitted + 60))
    assert out["values"] == [b"a%05d" % i for i in range(fitted)] + [b"b%05d" % i for i in range(60)]


def test_permanent_errors_fail_the_futures(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)

    async def main():
        async with us.Producer(log, "t", linger_ms=10_000) as p:
            futs = [await p.send(b"%d" % i) for i in range(10)]
            log.delete_topic("t")
            await p.flush()
            return await asyncio.gather(*futs, return_exceptions=True)

    res = run(main())
    assert all(isinstance(r, us.UnknownTopicError) for r in res)
    assert "t" not in log.topics()
    log.close()


def test_a_failure_nobody_awaited_is_reported_to_the_loop(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    reported = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        async with us.Producer(log, "t", linger_ms=10_000) as p:
            for i in range(5):
                await p.send(b"%d" % i)          # futures dropped on the floor
            log.delete_topic("t")
        gc.collect()

    run(main())
    msgs = [c for c in reported if "failed delivery" in c.get("message", "")]
    assert len(msgs) == 1
    assert "5 records" in msgs[0]["message"] and isinstance(msgs[0]["exception"], us.UnknownTopicError)
    log.close()


def test_a_failure_someone_awaited_is_not_reported_again(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    reported = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        async with us.Producer(log, "t", linger_ms=10_000) as p:
            f = await p.send(b"x")
            log.delete_topic("t")
            await p.flush()
            with pytest.raises(us.UnknownTopicError):
                await f
        gc.collect()

    run(main())
    assert not [c for c in reported if "failed delivery" in c.get("message", "")]
    log.close()
