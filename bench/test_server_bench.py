"""Server benchmarks (issue 17): confluent-kafka (librdkafka) through
``python -m unstoppable.server``, each beside the same-run native rate of the
embedded log's own asyncio client (``await producer.send()`` / ``getmany``).

Run with:  python -m pytest bench/test_server_bench.py -s

Workload: 100-byte values, one topic of 8 partitions, keyless, acks=1 and
linger.ms=5 for the Kafka producer, acks="written" for the native one. The
server runs in its own process, so the Kafka figures include a socket hop and
the RecordBatch v2 translation of the current data path (server/recordbatch.py).
The machine has 2 cores shared with other work: compare ratios, not absolutes.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import pytest

import unstoppable as us
from conftest import make_values

ck = pytest.importorskip("confluent_kafka")
pytest.importorskip("kio")

N = 200_000
PARTITIONS = 8
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, log_dir):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unstoppable.server", "--log", str(log_dir),
             "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
        line = self.proc.stdout.readline()
        assert line.startswith(b"serving"), line
        self.bootstrap = f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def values():
    return make_values(N)


def _fresh_log(path):
    shutil.rmtree(path, ignore_errors=True)
    log = us.Log(path)
    log.create_topic("bench", partitions=PARTITIONS)
    return log


def _native_send(path, values) -> float:
    log = _fresh_log(path)

    async def main():
        async with us.Producer(log, "bench") as p:
            send = p.send
            for v in values:
                await send(v)
    t0 = time.perf_counter()
    asyncio.run(main())
    dt = time.perf_counter() - t0
    log.close()
    return len(values) / dt


def _native_getmany(path, n) -> float:
    log = us.Log(path)

    async def main():
        got = 0
        async with us.Consumer(log, "bench") as c:
            for i in range(PARTITIONS):
                c.seek(us.TopicPartition("bench", i), 0)
            while got < n:
                for recs in (await c.getmany(max_records=10_000, timeout_ms=1000)).values():
                    got += len(recs)
    t0 = time.perf_counter()
    asyncio.run(main())
    dt = time.perf_counter() - t0
    log.close()
    return n / dt


def _kafka_produce(bootstrap, values) -> float:
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1,
                     "queue.buffering.max.messages": 1_000_000,
                     "batch.size": 1 << 20})
    errors = []

    def cb(err, _msg):
        if err:
            errors.append(err)
    t0 = time.perf_counter()
    produce = p.produce
    for v in values:
        while True:
            try:
                produce("bench", v, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.001)
    assert p.flush(120) == 0
    dt = time.perf_counter() - t0
    assert not errors, errors[:3]
    return len(values) / dt


def _kafka_consume(bootstrap, n) -> float:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                     "enable.auto.commit": False, "fetch.max.bytes": 50 << 20,
                     "max.partition.fetch.bytes": 4 << 20})
    c.assign([ck.TopicPartition("bench", i, 0) for i in range(PARTITIONS)])
    got = 0
    t0 = time.perf_counter()
    while got < n:
        for m in c.consume(10_000, 1.0):
            if m.error() is None:
                got += 1
    dt = time.perf_counter() - t0
    c.close()
    return n / dt


def test_produce_and_consume(tmp_path, values, report):
    rounds = 3
    kp, kc, np_, nc = [], [], [], []
    for _ in range(rounds):
        np_.append(_native_send(tmp_path / "native", values))
        nc.append(_native_getmany(tmp_path / "native", N))
        _fresh_log(tmp_path / "served").close()
        srv = _Server(tmp_path / "served")
        try:
            kp.append(_kafka_produce(srv.bootstrap, values))
            kc.append(_kafka_consume(srv.bootstrap, N))
        finally:
            srv.stop()
        with us.Log(tmp_path / "served") as log:
            assert sum(log.topic("bench").end_offsets()) == N
    m = statistics.median
    report.append(f"server produce, confluent-kafka linger 5 ms, 100 B: {m(kp) / 1e3:.0f} k msg/s; "
                  f"native await producer.send() same run: {m(np_) / 1e3:.0f} k/s -> "
                  f"{m(kp) / m(np_):.0%}; aim >= 500 k/s")
    report.append(f"server consume, confluent-kafka: {m(kc) / 1e3:.0f} k msg/s; native getmany "
                  f"same run: {m(nc) / 1e3:.0f} k/s -> {m(kc) / m(nc):.0%}; aim >= 1 M/s")


@pytest.mark.parametrize("rate", [10_000, 50_000])
def test_produce_latency(tmp_path, report, rate):
    """p99 from produce() to the delivery report, paced at ``rate`` msg/s for 3 s."""
    _fresh_log(tmp_path / "lat").close()
    srv = _Server(tmp_path / "lat")
    try:
        p = ck.Producer({"bootstrap.servers": srv.bootstrap, "linger.ms": 1, "acks": 1})
        lat = []
        secs = 3.0
        value = b"x" * 100
        t_start = time.perf_counter()
        sent = 0
        total = int(rate * secs)
        while sent < total:
            due = t_start + sent / rate
            now = time.perf_counter()
            if now < due:
                p.poll(0)
                continue
            t = now
            p.produce("bench", value, on_delivery=lambda e, m, t=t: lat.append(time.perf_counter() - t))
            sent += 1
            if sent % 100 == 0:
                p.poll(0)
        p.flush(60)
        achieved = total / (time.perf_counter() - t_start)
    finally:
        srv.stop()
    lat.sort()
    p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
    report.append(f"server produce latency, paced at {rate / 1e3:.0f} k msg/s (achieved "
                  f"{achieved / 1e3:.0f} k/s): p50 {p50:.2f} ms, p99 {p99:.2f} ms; aim p99 <= 5 ms at 50 k/s")
