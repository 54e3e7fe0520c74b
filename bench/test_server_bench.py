"""Server benchmarks (issue 17): confluent-kafka (librdkafka) through
``python -m unstoppable.server``, each beside the same-run native rate of the
embedded log's own asyncio client (``await producer.send()`` / ``getmany``).

Run with:  python -m pytest bench/test_server_bench.py -s

Workload: 100-byte values, one topic of 8 partitions, keyless, acks=1 and
linger.ms=5 for the Kafka producer, acks="written" for the native one. The
server runs in its own process, so the Kafka figures include a socket hop. The
data path is zero-copy: produced batches are appended as the client built them
and fetches are served with sendfile from the segment files.

Beside each rate, the server's own CPU time per message (from
/proc/<pid>/task/*/schedstat) and the client's (getrusage of this process,
librdkafka's threads included) tell the server's cost apart from the
client's, and the client's ceiling (the same produce() loop into a broker
address nobody listens on, so nothing leaves the process) says how fast that
Python loop can go at all on this machine: the Python-level confluent-kafka
loop (one produce() call, one Message object per record) is the limit here,
not the server. The produce figure is given twice, labelled: the loop as
confluent-kafka's examples write it (a delivery callback passed to every
produce() call) and with what a user who wants throughput sets
(TUNED_PRODUCER: the callback in the config, called only for failures). kcat (librdkafka without Python)
gives the consume rate of a C client when it is installed, and librdkafka's
own C tool ``rdkafka_performance`` (built in a librdkafka tree named by
$LIBRDKAFKA_SRC: ``make -C examples rdkafka_performance``) and
confluent-kafka's ``produce_batch`` show what the server takes from clients
that are not a Python loop of one call per message.

The latency test paces with ``poll(timeout)`` (a busy-wait pacer takes a core
from the server and from librdkafka's threads on this 2-core machine) and
splits the latency the way librdkafka's statistics do: ``int_latency`` (in the
client's queue before a request carries it: linger and waiting for a CPU),
``rtt`` (request to response), beside the server's own handling time and its
event loop's lag (its metrics) and, as the machine's floor, how late a
``sleep(1 ms)`` wakes up in the same run.
The machine has 2 cores shared with other work: compare ratios, not absolutes.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

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
    def __init__(self, log_dir, metrics: bool = False):
        self.port = _free_port()
        self.metrics_port = _free_port() if metrics else None
        extra = ["--metrics-port", str(self.metrics_port)] if metrics else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unstoppable.server", "--log", str(log_dir),
             "--port", str(self.port), *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
        line = self.proc.stdout.readline()
        assert line.startswith(b"serving"), line
        self.bootstrap = f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time of the server's threads so far, in nanoseconds' resolution
        (/proc/<pid>/task/*/schedstat; /proc/<pid>/stat counts 10 ms ticks)."""
        total = 0
        base = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(base):
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                pass                    # a thread that ended meanwhile
        return total / 1e9

    def histogram(self, name: str, labels: str = "") -> dict[float, float]:
        """Cumulative bucket counts {le: count} of one histogram of the server's metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            text = r.read().decode()
        out = {}
        for m in re.finditer(name + r'_bucket\{' + labels + r'le="([^"]+)"\} (\S+)', text):
            out[float(m.group(1))] = float(m.group(2))
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.proc.stdout.close()


def _within(hist: dict[float, float], le: float) -> float:
    """Fraction of a cumulative histogram's observations at or below ``le``."""
    total = hist.get(float("inf"), 0.0)
    return hist.get(le, 0.0) / total if total else float("nan")


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


#: What a confluent-kafka user who wants throughput sets, beside the bench's
#: base settings: one delivery callback for the producer (config
#: ``on_delivery``) that librdkafka calls only for failed messages
#: (``delivery.report.only.error``), instead of a Python callback per message
#: passed to each ``produce()``. Failures still reach the callback, and
#: ``flush()`` still returns the number of messages not delivered.
TUNED_PRODUCER = {"delivery.report.only.error": True}


def _producer_conf(bootstrap, tuned: bool, errors: list) -> dict:
    conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1,
            "queue.buffering.max.messages": 1_000_000, "batch.size": 1 << 20}
    if tuned:
        def on_delivery(err, _msg):
            errors.append(err)
        conf.update(TUNED_PRODUCER, on_delivery=on_delivery)
    return conf


def _kafka_produce(bootstrap, values, tuned: bool = False) -> float:
    """Messages per second from one confluent-kafka ``produce()`` loop.

    Timed: the loop of ``produce()`` calls and the ``flush()`` that waits for
    every delivery report. Not timed: the producer's start-up (a warm-up
    message to another topic connects it and fetches metadata first; that
    took 9-56 ms here, a tenth of a 200k-message run). ``tuned=False`` passes
    a Python delivery callback to every ``produce()`` call (confluent-kafka's
    own examples do); ``tuned=True`` uses :data:`TUNED_PRODUCER`."""
    errors: list = []
    p = ck.Producer(_producer_conf(bootstrap, tuned, errors))
    p.produce("warm-up", b"w")
    assert p.flush(30) == 0

    def cb(err, _msg):
        if err:
            errors.append(err)
    produce = p.produce
    t0 = time.perf_counter()
    if tuned:
        for v in values:
            while True:
                try:
                    produce("bench", v)
                    break
                except BufferError:
                    p.poll(0.001)
    else:
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


def _client_ceiling(values, tuned: bool = False) -> float:
    """The client's own ceiling: the same ``produce()`` loop and settings as
    :func:`_kafka_produce`, into a producer whose broker address nobody
    listens on, so no message leaves the process (they wait in librdkafka's
    queue, which is large enough for all). Calls per second: how fast that
    Python loop can go at all on this machine. (Without a broker librdkafka
    does not partition or batch the messages, so this is an upper bound.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))                    # bound, never listening
        conf = _producer_conf(f"127.0.0.1:{s.getsockname()[1]}", tuned, [])
        conf.update({"queue.buffering.max.messages": 2 * len(values),
                     "message.timeout.ms": 600_000, "log_level": 0})
        p = ck.Producer(conf)
        produce = p.produce

        def cb(err, _msg):
            pass
        t0 = time.perf_counter()
        if tuned:
            for v in values:
                produce("bench", v)
        else:
            for v in values:
                produce("bench", v, on_delivery=cb)
        dt = time.perf_counter() - t0
        assert len(p) >= len(values)
        p.purge()
        p.flush(5)
    return len(values) / dt


def _own_cpu() -> float:
    """CPU seconds of this process so far, all threads (librdkafka's too)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _kcat_consume(bootstrap, n) -> float | None:
    """Messages per second read by kcat (librdkafka's C consumer, no Python), or
    None without kcat. Includes kcat's start-up and connection."""
    if shutil.which("kcat") is None:
        return None
    t0 = time.perf_counter()
    out = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", "bench", "-o", "beginning", "-e",
                          "-q", "-X", "fetch.max.bytes=52428800",
                          "-X", "max.partition.fetch.bytes=4194304", "-f", "%o\n"],
                         capture_output=True, timeout=120)
    dt = time.perf_counter() - t0
    assert out.stdout.count(b"\n") == n, out.stderr[-500:]
    return n / dt


#: What a confluent-kafka consumer that wants throughput sets, measured one
#: at a time here (11:28-11:34 UTC, load 2.8-3.8, 1 M records, medians of 2-3
#: rounds, client CPU per message beside the same run's consume(10000) with
#: 4 MiB per partition and the 10 ms backoff, 963-1,625 ns against
#: 688-1,028 ns tuned):
#: ``fetch.queue.backoff.ms`` 10 (librdkafka's 1,000 ms default idles the
#: consumer once its queue passes ``queued.min.messages``: 0.27 M/s);
#: ``max.partition.fetch.bytes`` left at librdkafka's 1 MiB (4 MiB: 791 ns
#: against 704 ns); and :data:`TUNED_BATCH` messages per ``consume()`` call.
#: No measurable change: ``enable.auto.offset.store`` false,
#: ``enable.partition.eof`` false, ``queued.min.messages`` 1 M,
#: ``fetch.min.bytes`` 64 KiB; ``check.crcs`` stays at its default (false).
TUNED_CONSUMER = {"fetch.queue.backoff.ms": 10, "max.partition.fetch.bytes": 1 << 20}
#: Messages per ``consume()`` call when tuned. With 10,000 the Python thread
#: spent 685-1,082 ns per message against 424-568 ns with 500-1,000 (perf:
#: a larger share in Python's cyclic GC traversing the live Message objects,
#: and in malloc/free and the page faults of fresh memory).
TUNED_BATCH = 1_000


def _thread_cpu() -> tuple[float, float]:
    """CPU seconds so far of this process's main thread and of all its other
    threads (librdkafka's), from /proc/self/task/*/schedstat."""
    main = other = 0
    me = str(os.getpid())
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except FileNotFoundError:
            continue                    # a thread that ended meanwhile
        if tid == me:
            main += ns
        else:
            other += ns
    return main / 1e9, other / 1e9


def _kafka_consume(bootstrap, n, batch: int = 10_000, cpu: list | None = None, **conf) -> float:
    """Messages per second from one confluent-kafka consumer
    (``consume(batch)``), assigned all partitions from offset 0.

    Timed: the ``consume()`` loop until ``n`` messages without an error were
    received (every message's ``error()`` is looked at); not timed: the
    consumer's creation and ``assign()``, and ``close()``. ``cpu``, when
    given, receives (main thread, librdkafka's threads) CPU seconds per
    message over the timed part; threads that end inside it are not counted.

    librdkafka stops fetching a partition for ``fetch.queue.backoff.ms``
    (default 1,000 ms) whenever its local queue holds more than
    ``queued.min.messages`` (100,000); a consumer that drains faster than a
    second's worth then sits idle most of the time, against any broker
    (its debug log says "Fetch backoff for 1000ms: Local: Queue full").
    ``conf`` adds client settings, e.g. a shorter backoff."""
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                     "enable.auto.commit": False, "fetch.max.bytes": 50 << 20,
                     "max.partition.fetch.bytes": 4 << 20, **conf})
    c.assign([ck.TopicPartition("bench", i, 0) for i in range(PARTITIONS)])
    got = 0
    m0, o0 = _thread_cpu()
    t0 = time.perf_counter()
    while got < n:
        for m in c.consume(batch, 1.0):
            if m.error() is None:
                got += 1
    dt = time.perf_counter() - t0
    m1, o1 = _thread_cpu()
    if cpu is not None:
        cpu.append(((m1 - m0) / n, (o1 - o0) / n))
    c.close()
    return n / dt


def _kafka_produce_batch(bootstrap, values, chunk: int = 10_000) -> float:
    """Messages per second from confluent-kafka's ``produce_batch`` (one call
    per ``chunk`` messages; the message dicts are built before the clock starts,
    so this is the client library and the server, not the Python loop)."""
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1,
                     "queue.buffering.max.messages": 1_000_000, "batch.size": 1 << 20})
    chunks = [[{"value": v} for v in values[i:i + chunk]] for i in range(0, len(values), chunk)]
    p.produce("warm-up", b"w")            # connected before the clock starts, as _kafka_produce
    assert p.flush(30) == 0
    t0 = time.perf_counter()
    for c in chunks:
        while True:
            try:
                assert p.produce_batch("bench", c) == len(c)
                break
            except BufferError:
                p.poll(0.001)
        p.poll(0)
    assert p.flush(120) == 0
    return len(values) / (time.perf_counter() - t0)


def _rdkafka_performance() -> str | None:
    """librdkafka's own C benchmark tool (examples/rdkafka_performance of a
    built source tree: $RDKAFKA_PERFORMANCE, or under $LIBRDKAFKA_SRC), or None."""
    path = os.environ.get("RDKAFKA_PERFORMANCE")
    if not path and os.environ.get("LIBRDKAFKA_SRC"):
        path = os.path.join(os.environ["LIBRDKAFKA_SRC"], "examples", "rdkafka_performance")
    return path if path and os.access(path, os.X_OK) else None


def _rdperf(tool: str, args: list[str]) -> tuple[float, float]:
    """Run rdkafka_performance; (its own msgs/s figure, wall-clock msgs/s
    including its start-up)."""
    src = os.path.dirname(os.path.dirname(tool))
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
        [os.path.join(src, "src"), os.environ.get("LD_LIBRARY_PATH", "")]))
    t0 = time.perf_counter()
    out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=300, env=env)
    wall = time.perf_counter() - t0
    last = [line for line in out.stdout.splitlines() if "msgs/s" in line]
    assert out.returncode == 0 and last, (out.stdout[-2000:], out.stderr[-2000:])
    n = int(re.search(r"(\d+) messages", last[-1]).group(1))
    return float(re.search(r"(\d+) msgs/s", last[-1]).group(1)), n / wall


def test_server_capacity_with_c_and_bulk_clients(tmp_path, values, report):
    """What the server takes when the client is not a Python loop of one call
    per message: librdkafka's C tool (rdkafka_performance) producing and
    consuming 1 M messages, and confluent-kafka's produce_batch, beside the
    same-run produce() loop; with the server's CPU per message."""
    tool = _rdkafka_performance()
    n_c = 1_000_000
    rows = []
    for _ in range(3):
        _fresh_log(tmp_path / "cap").close()
        srv = _Server(tmp_path / "cap")
        try:
            c0 = srv.cpu_seconds()
            loop_rate = _kafka_produce(srv.bootstrap, values)
            c1 = srv.cpu_seconds()
            batch_rate = _kafka_produce_batch(srv.bootstrap, values)
            c2 = srv.cpu_seconds()
            row = {"loop": loop_rate, "batch": batch_rate, "cpu_loop": (c1 - c0) / len(values),
                   "cpu_batch": (c2 - c1) / len(values)}
            if tool:
                row["c_produce"] = _rdperf(tool, [
                    "-P", "-t", "bench", "-b", srv.bootstrap, "-s", "100", "-c", str(n_c), "-a", "1",
                    "-X", "linger.ms=5", "-X", "queue.buffering.max.messages=1000000"])
                c3 = srv.cpu_seconds()
                parts = [a for i in range(PARTITIONS) for a in ("-p", str(i))]
                total = 2 * len(values) + n_c
                row["c_consume"] = _rdperf(tool, [
                    "-C", "-t", "bench", "-b", srv.bootstrap, *parts, "-o", "beginning",
                    "-c", str(total), "-X", "fetch.max.bytes=52428800",
                    "-X", "max.partition.fetch.bytes=4194304"])
                c4 = srv.cpu_seconds()
                row["cpu_c_produce"] = (c3 - c2) / n_c
                row["cpu_c_consume"] = (c4 - c3) / total
            rows.append(row)
        finally:
            srv.stop()
    m = statistics.median

    def med(k):
        return m(r[k] for r in rows)
    report.append(
        f"server produce, confluent-kafka produce_batch (10k per call): {med('batch') / 1e3:.0f} k msg/s "
        f"beside the produce() loop same run {med('loop') / 1e3:.0f} k/s -> "
        f"{med('batch') / med('loop'):.1f}x; server CPU {med('cpu_batch') * 1e9:.0f} ns/msg "
        f"(loop: {med('cpu_loop') * 1e9:.0f} ns/msg)")
    if tool:
        report.append(
            f"server with librdkafka's C rdkafka_performance, 100 B, linger 5 ms: produce "
            f"{m(r['c_produce'][0] for r in rows) / 1e3:.0f} k msg/s (wall incl. start-up "
            f"{m(r['c_produce'][1] for r in rows) / 1e3:.0f} k/s), consume "
            f"{m(r['c_consume'][0] for r in rows) / 1e3:.0f} k msg/s (wall "
            f"{m(r['c_consume'][1] for r in rows) / 1e3:.0f} k/s); server CPU produce "
            f"{med('cpu_c_produce') * 1e9:.0f} ns/msg, consume {med('cpu_c_consume') * 1e9:.0f} ns/msg; "
            f"same run confluent-kafka produce() loop {med('loop') / 1e3:.0f} k/s")
    else:
        report.append("server with a C client: skipped (set $LIBRDKAFKA_SRC to a built librdkafka "
                      "tree with examples/rdkafka_performance, or $RDKAFKA_PERFORMANCE)")


def test_produce_and_consume(tmp_path, values, report):
    """The bench's figures: a confluent-kafka ``produce()`` loop (linger 5 ms,
    100 B) as in confluent-kafka's examples (a delivery callback per message)
    and as tuned for throughput (:data:`TUNED_PRODUCER`), alternating which
    goes first, each beside the same loop with no broker at all (the client's
    ceiling), the client's and the server's CPU per message, and the native
    ``send()``; then a consumer, beside native ``getmany``."""
    rounds = 3
    kp, kpt, kc, kc10, kct, np_, nc, kcat = [], [], [], [], [], [], [], []
    ceil, ceilt = [], []
    cpu_p, cpu_pt, cli_p, cli_pt, cpu_c, cli_c = [], [], [], [], [], []
    for i in range(rounds):
        np_.append(_native_send(tmp_path / "native", values))
        nc.append(_native_getmany(tmp_path / "native", N))
        ceil.append(_client_ceiling(values))
        ceilt.append(_client_ceiling(values, tuned=True))
        _fresh_log(tmp_path / "served").close()
        srv = _Server(tmp_path / "served")
        try:
            for tuned in ((False, True) if i % 2 == 0 else (True, False)):
                c0, o0 = srv.cpu_seconds(), _own_cpu()
                (kpt if tuned else kp).append(_kafka_produce(srv.bootstrap, values, tuned))
                (cpu_pt if tuned else cpu_p).append((srv.cpu_seconds() - c0) / N)
                (cli_pt if tuned else cli_p).append((_own_cpu() - o0) / N)
            c0, o0 = srv.cpu_seconds(), _own_cpu()
            kc.append(_kafka_consume(srv.bootstrap, N))
            cpu_c.append((srv.cpu_seconds() - c0) / N)
            cli_c.append((_own_cpu() - o0) / N)
            kc10.append(_kafka_consume(srv.bootstrap, N, **{"fetch.queue.backoff.ms": 10}))
            kct.append(_kafka_consume(srv.bootstrap, N, TUNED_BATCH, **TUNED_CONSUMER))
            r = _kcat_consume(srv.bootstrap, 2 * N)
            if r is not None:
                kcat.append(r)
        finally:
            srv.stop()
        with us.Log(tmp_path / "served") as log:
            assert sum(log.topic("bench").end_offsets()) == 2 * N
    m = statistics.median

    def rng(xs, scale=1e3):
        return f"{min(xs) / scale:.0f}-{max(xs) / scale:.0f}"
    report.append(
        f"server produce, confluent-kafka produce() loop, linger 5 ms, 100 B, 200k messages "
        f"(timed: the produce() calls and flush(); the producer connected beforehand), "
        f"medians of {rounds} rounds, load {os.getloadavg()[0]:.1f}:\n"
        f"  tuned (config on_delivery + delivery.report.only.error): {m(kpt) / 1e3:.0f} k msg/s "
        f"({rng(kpt)}); aim >= 500 k/s. Same run, the same loop with no broker (client "
        f"ceiling) {m(ceilt) / 1e3:.0f} k calls/s; client CPU {m(cli_pt) * 1e9:.0f} ns/msg "
        f"(= {1 / m(cli_pt) / 1e3:.0f} k msg/s per core), server CPU {m(cpu_pt) * 1e9:.0f} ns/msg\n"
        f"  a delivery callback per produce() call: {m(kp) / 1e3:.0f} k msg/s ({rng(kp)}); "
        f"client ceiling {m(ceil) / 1e3:.0f} k calls/s; client CPU {m(cli_p) * 1e9:.0f} ns/msg "
        f"(= {1 / m(cli_p) / 1e3:.0f} k msg/s per core), server CPU {m(cpu_p) * 1e9:.0f} ns/msg\n"
        f"  native await producer.send() same run: {m(np_) / 1e3:.0f} k/s "
        f"(tuned {m(kpt) / m(np_):.0%} of it)")
    report.append(f"server consume, confluent-kafka consume(10000): {m(kc10) / 1e3:.0f} k msg/s with "
                  f"fetch.queue.backoff.ms=10, {m(kc) / 1e3:.0f} k msg/s with librdkafka's default "
                  f"1000 ms; native getmany same run: {m(nc) / 1e3:.0f} k/s -> {m(kc10) / m(nc):.0%} "
                  f"/ {m(kc) / m(nc):.0%}; aim >= 1 M/s. CPU per message (default settings): "
                  f"client {m(cli_c) * 1e9:.0f} ns (= {1 / m(cli_c) / 1e3:.0f} k msg/s per core), "
                  f"server {m(cpu_c) * 1e9:.0f} ns (= {1 / max(m(cpu_c), 1e-12) / 1e6:.0f} M msg/s "
                  f"per core); tuned (consume({TUNED_BATCH}), {TUNED_CONSUMER}): "
                  f"{m(kct) / 1e3:.0f} k msg/s"
                  + (f"; kcat (C client, incl. start-up; the Debian package's "
                     f"older librdkafka) {m(kcat) / 1e3:.0f} k/s" if kcat else ""))


def _sleep_overshoot(out: list) -> None:
    """The machine's floor: how late a 1 ms sleep wakes up (a subprocess, so no GIL is shared)."""
    code = ("import time,sys\nend=time.perf_counter()+float(sys.argv[1])\no=[]\n"
            "while time.perf_counter()<end:\n t=time.perf_counter();time.sleep(0.001)\n"
            " o.append(time.perf_counter()-t-0.001)\no.sort()\n"
            "print(o[len(o)//2],o[int(len(o)*0.99)])")
    r = subprocess.run([sys.executable, "-c", code, "3"], capture_output=True, text=True)
    out.extend(float(x) for x in r.stdout.split())


@pytest.mark.parametrize("rate", [10_000, 50_000])
def test_produce_latency(tmp_path, report, rate):
    """p99 from produce() to the delivery report, paced at ``rate`` msg/s for 3 s."""
    _fresh_log(tmp_path / "lat").close()
    srv = _Server(tmp_path / "lat", metrics=True)
    stats = []
    try:
        p = ck.Producer({"bootstrap.servers": srv.bootstrap, "linger.ms": 1, "acks": 1,
                         "statistics.interval.ms": 1000,
                         "stats_cb": lambda s: stats.append(json.loads(s))})
        p.produce("bench", b"warm-up")
        assert p.flush(10) == 0
        stats.clear()
        floor: list = []
        th = threading.Thread(target=_sleep_overshoot, args=(floor,))
        th.start()
        lat = []
        secs = 3.0
        value = b"x" * 100
        total = int(rate * secs)
        sent = 0
        t_start = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - t_start) * rate) + 1)
            while sent < due:
                t = time.perf_counter()
                p.produce("bench", value,
                          on_delivery=lambda e, m, t=t: lat.append(time.perf_counter() - t))
                sent += 1
            # Wait for the next message's time inside poll(): delivery
            # reports are served meanwhile, and no core is burnt.
            p.poll(max(0.0, min(0.001, t_start + sent / rate - time.perf_counter())))
        assert p.flush(60) == 0
        achieved = total / (time.perf_counter() - t_start)
        th.join()
        served = srv.histogram("unstoppable_server_request_seconds", 'api="Produce",')
        loop_lag = srv.histogram("unstoppable_server_loop_lag_seconds")
    finally:
        srv.stop()
    assert len(lat) == total
    lat.sort()
    p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
    broker = [b for s in stats for b in s["brokers"].values() if b.get("nodeid", -1) >= 0]
    int_p99 = statistics.median(b["int_latency"]["p99"] for b in broker) / 1e3 if broker else -1
    rtt_p99 = statistics.median(b["rtt"]["p99"] for b in broker) / 1e3 if broker else -1
    report.append(
        f"server produce latency, paced at {rate / 1e3:.0f} k msg/s (achieved "
        f"{achieved / 1e3:.0f} k/s): p50 {p50:.2f} ms, p99 {p99:.2f} ms; aim p99 <= 5 ms at 50 k/s. "
        f"librdkafka p99: int_latency {int_p99:.2f} ms, rtt {rtt_p99:.2f} ms; server: "
        f"{_within(served, 0.0005):.1%} of produces handled within 0.5 ms, loop lag <= 1 ms "
        f"{_within(loop_lag, 0.001):.1%}, <= 5 ms {_within(loop_lag, 0.005):.1%}; machine floor "
        f"same run: sleep(1 ms) wakes late by p50 {floor[0] * 1e3:.2f} ms, "
        f"p99 {floor[1] * 1e3:.2f} ms")


def test_consume_a_million(tmp_path, report):
    """The consume aim at its own scale: 1 M records of 100 B (8 partitions,
    written beforehand through ``Partition.append`` in calls of 12,500
    records, which the log stores as two batches of at most 1 MiB: 1,048,525
    and 327,797 bytes, so a fetch carries about one 61-byte batch header per
    9,500 records, and the server sends only whole batches) read through the
    server by one confluent-kafka consumer in three settings, rotating which
    goes first: librdkafka's defaults as the bench had them (consume(10000),
    4 MiB per partition, ``fetch.queue.backoff.ms`` 1,000 ms), the same with
    a 10 ms backoff, and :data:`TUNED_CONSUMER` with consume(:data:`TUNED_BATCH`);
    each beside the client's CPU per message (its Python thread and
    librdkafka's threads apart), the server's, and the same-run native
    ``getmany`` over the same log."""
    n = 1_000_000
    log = _fresh_log(tmp_path / "m")
    t = log.topic("bench")
    chunk = [b"x" * 100] * 12_500
    for i in range(n // len(chunk)):
        t.partition(i % PARTITIONS).append(chunk)
    log.close()
    settings = {
        "default (consume(10000), 4 MiB/partition, backoff 1000 ms)": (10_000, {}),
        "backoff 10 ms (consume(10000), 4 MiB/partition)": (10_000, {"fetch.queue.backoff.ms": 10}),
        f"tuned (consume({TUNED_BATCH}), {TUNED_CONSUMER})": (TUNED_BATCH, TUNED_CONSUMER),
    }
    rates: dict = {k: [] for k in settings}
    cli: dict = {k: [] for k in settings}
    srv_cpu: dict = {k: [] for k in settings}
    native = []
    names = list(settings)
    for r in range(3):
        native.append(_native_getmany(tmp_path / "m", n))
        srv = _Server(tmp_path / "m")
        try:
            for name in names[r:] + names[:r]:
                batch, conf = settings[name]
                c0 = srv.cpu_seconds()
                rates[name].append(_kafka_consume(srv.bootstrap, n, batch, cli[name], **conf))
                srv_cpu[name].append((srv.cpu_seconds() - c0) / n)
        finally:
            srv.stop()
    m = statistics.median
    lines = []
    for name in names:
        main_ns = m(c[0] for c in cli[name]) * 1e9
        rdk_ns = m(c[1] for c in cli[name]) * 1e9
        lines.append(
            f"  {name}: {m(rates[name]) / 1e6:.2f} M msg/s "
            f"({', '.join(f'{x / 1e6:.2f}' for x in rates[name])}); client CPU "
            f"{main_ns + rdk_ns:.0f} ns/msg (Python thread {main_ns:.0f}, librdkafka's "
            f"threads {rdk_ns:.0f}; = {1e3 / (main_ns + rdk_ns):.2f} M msg/s per core), "
            f"server {m(srv_cpu[name]) * 1e9:.0f} ns/msg")
    tuned, short = names[2], names[1]
    report.append(
        "server consume of 1 M records, one confluent-kafka consumer (timed: the consume() "
        f"loop, every message's error() looked at), medians of 3 rounds, load "
        f"{os.getloadavg()[0]:.1f}; aim >= 1 M/s:\n" + "\n".join(lines) +
        f"\n  tuned / backoff-10-ms same run: {m(rates[tuned]) / m(rates[short]):.2f}x; native "
        f"getmany same run {m(native) / 1e6:.2f} M/s")
