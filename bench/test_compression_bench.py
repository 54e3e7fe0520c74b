"""Batch compression (issue 16): zstd-compressed append of booking events and
reading compressed batches, each beside two same-run baselines: the codec's
own compress/decompress of the same record blocks (what the codec alone
allows) and the uncompressed append/read.
Run with:  python -m pytest bench/test_compression_bench.py -s

Workload: the demo's booking events (protobuf BookingEvent: reservation
requests, payments and expiries, keyed by seat), 200k events.
"""
from __future__ import annotations

import os
import random
import statistics
import time

import pytest

import unstoppable as us
from unstoppable import compression
from unstoppable._core.batch import BatchEncoder
from unstoppable.booking import events as ev

N = 200_000
CHUNK = 10_000   # records per append call (about one 1 MiB batch)


def _booking_events(n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(seat key, serialized BookingEvent) pairs shaped like the demo's traffic."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        seat = "%s-%d" % ("ABCDEFGHJK"[rnd.randrange(10)], rnd.randrange(1, 41))
        booking = "%032x" % rnd.getrandbits(128)
        user = "user-%d" % rnd.randrange(5000)
        eid = "%032x" % rnd.getrandbits(128)
        t = 1_796_000_000_000 + i * 3
        k = rnd.random()
        if k < 0.5:
            e = ev.reservation_requested(booking, user, seat, event_id=eid, occurred_ms=t)
        elif k < 0.85:
            e = ev.payment_received(booking, seat, "pay-%d" % i, 4_500 + rnd.randrange(100) * 50,
                                    user, event_id=eid, occurred_ms=t)
        else:
            e = ev.reservation_expired(booking, seat, t + 600_000, occurred_ms=t)
        out.append((seat.encode(), e.SerializeToString()))
    return out


def _log_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
               for f in fs if f.endswith(".log"))


def _append_all(path, chunks, compression):
    with us.Log(path) as log:
        p = log.create_topic("b").partition(0)
        t0, c0 = time.perf_counter(), time.thread_time()
        for c in chunks:
            p.append(c, timestamp=1, compression=compression)
        dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return dt, cpu


def _blocks(chunks) -> list[bytes]:
    """The uncompressed record block of each batch append encodes (default batch size)."""
    out = []
    for c in chunks:
        enc = BatchEncoder()
        enc.encode(c, 1)
        view = enc.view()
        out.extend(bytes(view[pos + 61:pos + n]) for pos, n, _ in enc.batch_spans())
        view.release()
    return out


def _codec_alone(cid: int, blocks: list[bytes]) -> tuple[tuple, tuple]:
    """(wall, CPU) seconds to compress every block, and to decompress them all, with the codec alone."""
    t0, c0 = time.perf_counter(), time.thread_time()
    packed = [compression.compress(cid, b) for b in blocks]
    t1, c1 = time.perf_counter(), time.thread_time()
    for z in packed:
        compression.decompress(cid, z)
    return (t1 - t0, c1 - c0), (time.perf_counter() - t1, time.thread_time() - c1)


@pytest.fixture(scope="module")
def events():
    recs = _booking_events(N)
    return recs, sum(len(k) + len(v) for k, v in recs)


def test_zstd_append_of_booking_events(benchmark, tmp_path, report, events):
    recs, input_bytes = events
    chunks = [recs[i:i + CHUNK] for i in range(0, N, CHUNK)]
    blocks = _blocks(chunks)
    rounds = {"zstd": [], None: [], "codec": []}
    sizes = {}
    for r in range(5):       # alternate subject and baselines
        for codec in ("zstd", None):
            d = tmp_path / f"{codec}-{r}"
            rounds[codec].append(_append_all(d, chunks, codec))
            sizes[codec] = _log_bytes(d)
            us.Log(d).close()
        rounds["codec"].append(_codec_alone(compression.CODECS["zstd"], blocks)[0])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    z, plain, alone = (statistics.median(w for w, _ in rounds[k]) for k in ("zstd", None, "codec"))
    z_cpu, alone_cpu = (statistics.median(c for _, c in rounds[k]) for k in ("zstd", "codec"))
    mbps = input_bytes / z / 1e6
    ratio = sizes[None] / sizes["zstd"]
    benchmark.extra_info.update(zstd_input_mb_per_s=mbps, ratio=ratio,
                                plain_input_mb_per_s=input_bytes / plain / 1e6,
                                codec_alone_input_mb_per_s=input_bytes / alone / 1e6)
    report.append(
        f"zstd append of booking events: {mbps:.0f} MB/s of input ({N / z / 1e3:.0f} k events/s), "
        f"compression ratio {ratio:.2f} ({sizes[None] / 1e6:.1f} MB -> {sizes['zstd'] / 1e6:.1f} MB); "
        f"same run: {compression.libraries()['zstd']} level {compression.ZSTD_LEVEL} alone on the same "
        f"blocks {input_bytes / alone / 1e6:.0f} MB/s of input (append = {alone / z:.0%} of it), "
        f"uncompressed append {input_bytes / plain / 1e6:.0f} MB/s (aim: zstd >= 200 MB/s); "
        f"per second of this thread's CPU time (one core, whatever else runs): append "
        f"{input_bytes / z_cpu / 1e6:.0f} MB/s, the codec alone {input_bytes / alone_cpu / 1e6:.0f} MB/s")


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_read_compressed_batches(benchmark, tmp_path, report, events, codec):
    recs, _ = events
    chunks = [recs[i:i + CHUNK] for i in range(0, N, CHUNK)]
    paths = {}
    for c in (codec, None):
        paths[c] = tmp_path / f"r-{c}"
        _append_all(paths[c], chunks, c)

    def read(path):
        with us.Log(path) as log:
            p = log.topic("b").partition(0)
            total = n = 0
            off = 0
            t0, c0 = time.perf_counter(), time.thread_time()
            while off < p.end_offset:
                for b in p.read_batches(off, 8 << 20):
                    total += b.value_bytes_total()   # decompressed, CRC-checked, every record located
                    n += len(b)
                    off = b.next_offset
            dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
        assert n == N
        return total, (dt, cpu)

    blocks = _blocks(chunks)
    times = {codec: [], None: [], "codec": []}
    for _ in range(5):
        for c in (codec, None):
            total, dt = read(paths[c])
            times[c].append(dt)
        times["codec"].append(_codec_alone(compression.CODECS[codec], blocks)[1])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    t, plain, alone = (statistics.median(w for w, _ in times[k]) for k in (codec, None, "codec"))
    t_cpu, alone_cpu = (statistics.median(c for _, c in times[k]) for k in (codec, "codec"))
    mbps = total / t / 1e6
    benchmark.extra_info.update(decompressed_value_mb_per_s=mbps, plain_mb_per_s=total / plain / 1e6,
                                codec_alone_value_mb_per_s=total / alone / 1e6)
    report.append(
        f"read {codec} batches: {mbps:.0f} MB/s of decompressed values ({N / t / 1e6:.2f} M records/s); "
        f"same run: {compression.libraries()[codec]} decompressing the same blocks alone "
        f"{total / alone / 1e6:.0f} MB/s of values (read = {alone / t:.0%} of it), "
        f"uncompressed read {total / plain / 1e6:.0f} MB/s (aim: >= 500 MB/s); per second of this "
        f"thread's CPU time: read {total / t_cpu / 1e6:.0f} MB/s, the codec alone "
        f"{total / alone_cpu / 1e6:.0f} MB/s")
