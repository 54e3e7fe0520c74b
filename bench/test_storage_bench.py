"""Storage benchmarks (issue 2): append, read and reopen, each beside a baseline
measured in the same run. Run with:  python -m pytest bench -s

Workload: 100-byte values, 8 partitions, 1M records.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import pytest

import unstoppable as us
from conftest import VALUE_SIZE, make_values, memcpy_gbps, raw_write_gbps

N = 1_000_000
PARTITIONS = 8
CHUNK = 10_000  # records per append call (about 1 MiB, one batch)


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
               for f in fs if f.endswith(".log"))


@pytest.mark.parametrize("per_call", [CHUNK, N // PARTITIONS], ids=["10k-per-call", "one-call-per-partition"])
def test_append_vs_raw_write(benchmark, tmp_path, report, per_call):
    """append() of lists of values. The lists are built before the clock starts
    (as the raw write() baseline's buffer is); 10k records per call is one ~1 MiB
    batch per call; one call per partition takes the pipelined path (encode in
    this thread while a C thread writes)."""
    values = make_values(N)
    per = N // PARTITIONS
    calls = [[values[i * per + k:i * per + min(k + per_call, per)] for k in range(0, per, per_call)]
             for i in range(PARTITIONS)]
    raw = []
    state = {}

    def setup():
        if "log" in state:
            state.pop("log").close()  # the clean-close fsync stays outside the timed part
        # Same-run baseline, alternating with the subject: raw write() of 1 MiB chunks.
        raw.append(raw_write_gbps(str(tmp_path / "raw"), int(N * (VALUE_SIZE + 6))))
        d = tmp_path / "log"
        shutil.rmtree(d, ignore_errors=True)
        log = us.Log(d)
        state["log"] = log
        state["parts"] = list(log.create_topic("bench", partitions=PARTITIONS))
        os.sync()

    def run():
        for p, lists in zip(state["parts"], calls):
            for records in lists:
                p.append(records, timestamp=1)

    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1)
    state.pop("log").close()
    times = benchmark.stats.stats.data
    file_bytes = _dir_bytes(tmp_path / "log")
    payload = N * VALUE_SIZE
    med = statistics.median(times)
    app_payload = payload / med / 1e9
    app_file = file_bytes / med / 1e9
    raw_med = statistics.median(raw)
    ratio = app_file / raw_med
    benchmark.extra_info.update(records_per_s=N / med, payload_gbps=app_payload, file_gbps=app_file,
                                raw_write_gbps=raw_med, ratio=ratio)
    report.append(
        f"append ({per_call} records per call, 8 partitions, 1M x 100 B): {N / med / 1e6:.1f} M records/s, "
        f"{app_file:.2f} GB/s to the file ({app_payload:.2f} GB/s payload); "
        f"raw write() 1 MiB chunks same run: {raw_med:.2f} GB/s (median of {len(raw)}) -> {ratio:.0%}")


@pytest.fixture(scope="module")
def filled_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("read") / "log"
    values = make_values(N)
    per = N // PARTITIONS
    with us.Log(d) as log:
        for i, p in enumerate(log.create_topic("bench", partitions=PARTITIONS)):
            mine = values[i * per:(i + 1) * per]
            for k in range(0, per, CHUNK):
                p.append(mine[k:k + CHUNK], timestamp=1)
    return d


def test_read_batches_vs_memcpy(benchmark, filled_log, report):
    log = us.Log(filled_log)
    parts = list(log.topic("bench"))
    base = memcpy_gbps()

    def run():
        total = 0
        n = 0
        for p in parts:
            off, end = p.start_offset, p.end_offset
            while off < end:
                for b in p.read_batches(off, 8 << 20):
                    total += b.value_bytes_total()  # CRC-checked, every record located
                    n += len(b)
                    off = b.next_offset
        assert n == N
        return total

    total = benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    med = statistics.median(benchmark.stats.stats.data)
    gbps = total / med / 1e9
    after = memcpy_gbps()
    mem = statistics.median([base, after])
    benchmark.extra_info.update(value_gbps=gbps, records_per_s=N / med, memcpy_gbps=mem, ratio=gbps / mem)
    report.append(
        f"read as views in batches (CRC checked): {N / med / 1e6:.1f} M records/s, {gbps:.2f} GB/s of values; "
        f"memcpy same run: {mem:.2f} GB/s -> {gbps / mem:.0%}")
    log.close()


def test_read_records_api(benchmark, filled_log, report):
    """Per-record objects with their value views (what most callers use)."""
    log = us.Log(filled_log)
    parts = list(log.topic("bench"))

    def run():
        n = 0
        for p in parts:
            off, end = p.start_offset, p.end_offset
            while off < end:
                rs = p.read(off, max_records=CHUNK, max_bytes=4 << 20)
                for r in rs:
                    r.value
                n += len(rs)
                off = rs[-1].offset + 1
        assert n == N

    benchmark.pedantic(run, rounds=3, iterations=1)
    med = statistics.median(benchmark.stats.stats.data)
    benchmark.extra_info.update(records_per_s=N / med)
    report.append(f"read() Record objects + .value view: {N / med / 1e6:.2f} M records/s")
    log.close()


WRITER = textwrap.dedent("""
    import os, sys, unstoppable as us
    target = int(sys.argv[2])
    log = us.Log(sys.argv[1])
    parts = list(log.create_topic("big", partitions=8))
    vals = [os.urandom(92) + i.to_bytes(8, "little") for i in range(10000)]
    written = 0
    i = 0
    while True:
        parts[i % 8].append(vals, timestamp=1)
        written += 10000 * 106
        i += 1
        if written >= target and i % 8 == 0:
            sys.stdout.write("filled\\n")
            sys.stdout.flush()
            target = 1 << 62   # keep appending until killed: the kill lands mid-append
""")


def test_reopen_after_kill9(benchmark, tmp_path, report):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    d = tmp_path / "big"
    proc = subprocess.Popen([sys.executable, str(script), str(d), str(1 << 30)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"filled\n"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    size = _dir_bytes(d)
    first = {}

    def reopen():
        t0 = time.perf_counter()
        log = us.Log(d)
        t = log.topic("big")  # opens and recovers all 8 partitions
        dt = time.perf_counter() - t0
        if not first:
            first["seconds"] = dt
            first["recovery"] = [p.recovery for p in t]
        log._flusher.stop()
        for p in t:  # drop without the clean-close fsync, like another crash
            p._closed = True
            p._close_files()
        log._closed = True

    benchmark.pedantic(reopen, rounds=5, iterations=1)
    truncated = sum(r.truncated_bytes for r in first["recovery"])
    benchmark.extra_info.update(log_bytes=size, first_reopen_s=first["seconds"], torn_tail_bytes=truncated)
    report.append(
        f"reopen a {size / 2**30:.2f} GiB log after kill -9 of its writer: first open {first['seconds'] * 1000:.1f} ms "
        f"(cut {truncated} torn bytes), median {statistics.median(benchmark.stats.stats.data) * 1000:.1f} ms; target < 500 ms")
    assert first["seconds"] < 0.5
