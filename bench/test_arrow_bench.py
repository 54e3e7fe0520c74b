"""Arrow export and ingest benchmarks (issue 6), each beside baselines measured
in the same run. Run with:  python -m pytest bench/test_arrow_bench.py -s

Workload: 1M records of 100-byte values (make_values), 2 partitions.
Targets: export of value bytes >= 1 GB/s or 30% of memcpy; ingest >= 1 GB/s;
peak RSS of a Parquet export of a topic 5x the export batch size, reported.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import textwrap

import pytest

pa = pytest.importorskip("pyarrow")

import unstoppable as us  # noqa: E402
from unstoppable import arrow as ua  # noqa: E402
from conftest import VALUE_SIZE, make_values, memcpy_gbps, raw_write_gbps  # noqa: E402

N = 1_000_000
PARTITIONS = 2


@pytest.fixture(scope="module")
def values_table():
    return pa.table({"key": pa.array([b"%d" % (i % 1000) for i in range(N)], pa.binary()),
                     "value": pa.array(make_values(N), pa.binary())})


@pytest.fixture(scope="module")
def filled_log(tmp_path_factory, values_table):
    d = tmp_path_factory.mktemp("arrow") / "log"
    with us.Log(d) as log:
        t = log.create_topic("bench", partitions=PARTITIONS)
        ua.append_arrow(t, values_table, default_timestamp=1)
    return d


def test_export_value_bytes_vs_memcpy(benchmark, filled_log, report):
    """to_batches over the whole topic: CRC check, decode and copy into Arrow buffers."""
    log = us.Log(filled_log)
    t = log.topic("bench")
    mem = [memcpy_gbps()]

    def run():
        n = total = 0
        for b in t.to_batches():
            n += b.num_rows
            total += b.column("value").nbytes
        assert n == N
        return N * VALUE_SIZE

    def setup():
        mem.append(memcpy_gbps(rounds=2))  # alternates with the subject, outside its timing

    payload = benchmark.pedantic(run, setup=setup, rounds=7, iterations=1)
    times = benchmark.stats.stats.data
    med = statistics.median(times)
    gbps = payload / med / 1e9
    m = statistics.median(mem)
    benchmark.extra_info.update(value_gbps=gbps, records_per_s=N / med, memcpy_gbps=m,
                                ratio=gbps / m, spread=f"{min(times):.4f}..{max(times):.4f}s")
    report.append(
        f"arrow export to_batches (1M x 100 B, {PARTITIONS} partitions): {N / med / 1e6:.1f} M records/s, "
        f"{gbps:.2f} GB/s of values (best round {payload / min(times) / 1e9:.2f}); "
        f"memcpy same run: {m:.2f} GB/s (median of {len(mem)}) -> {gbps / m:.0%}")
    log.close()
    assert gbps >= 1.0 or gbps >= 0.3 * m


def test_to_arrow_table(benchmark, filled_log, report):
    """to_arrow: the whole topic materialized as one Table."""
    log = us.Log(filled_log)
    t = log.topic("bench")
    benchmark.pedantic(lambda: t.to_arrow(), rounds=5, iterations=1, warmup_rounds=1)
    med = statistics.median(benchmark.stats.stats.data)
    report.append(f"arrow export to_arrow (whole topic as a Table): {N * VALUE_SIZE / med / 1e9:.2f} GB/s "
                  f"of values, {N / med / 1e6:.1f} M records/s")
    log.close()


def test_ingest_vs_baselines(benchmark, tmp_path, values_table, report):
    """append_arrow of the 1M-row table into one partition (pipelined, encoded
    in C from the Arrow buffers), beside raw write() and Partition.append of
    the same values as a list of bytes."""
    raw, py = [], []
    state = {}
    values = values_table.column("value").to_pylist()
    single = values_table.select(["value"])

    def fresh(name):
        d = tmp_path / name
        shutil.rmtree(d, ignore_errors=True)
        log = us.Log(d)
        return log, log.create_topic("bench").partition(0)

    def setup():
        if "log" in state:
            state.pop("log").close()
        raw.append(raw_write_gbps(str(tmp_path / "raw"), int(N * (VALUE_SIZE + 6))))
        log, p = fresh("list")
        os.sync()
        t0 = _now()
        p.append(values, timestamp=1)
        py.append(N * VALUE_SIZE / (_now() - t0) / 1e9)
        log.close()
        state["log"], state["p"] = fresh("log")
        os.sync()

    def run():
        ua.append_arrow(state["p"], single, default_timestamp=1)

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    state.pop("log").close()
    med = statistics.median(benchmark.stats.stats.data)
    gbps = N * VALUE_SIZE / med / 1e9
    r, p = statistics.median(raw), statistics.median(py)
    mem = memcpy_gbps()
    benchmark.extra_info.update(value_gbps=gbps, raw_write_gbps=r, append_list_gbps=p, memcpy_gbps=mem)
    report.append(
        f"arrow ingest append_arrow (1M x 100 B, one partition): {N / med / 1e6:.1f} M records/s, "
        f"{gbps:.2f} GB/s of values; same run: raw write() {r:.2f} GB/s, Partition.append(list of "
        f"bytes) {p:.2f} GB/s, memcpy {mem:.2f} GB/s")
    assert gbps >= 1.0 or gbps >= 0.5 * r


def _now():
    import time
    return time.perf_counter()


RSS_CHILD = textwrap.dedent("""
    import sys, unstoppable as us
    from unstoppable import arrow as ua
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    t = us.Log(sys.argv[1]).topic("big")
    ua.to_arrow(t, end=1000)   # imports and allocator warmed up
    before = status("VmHWM")
    rows = ua.export_parquet(t, sys.argv[2], row_group_bytes=int(sys.argv[3]))
    print(rows, before, status("VmHWM"))
""")


@pytest.mark.parametrize("multiple", [5, 20])
def test_parquet_export_peak_rss(tmp_path, report, multiple):
    batch = 16 << 20
    n = multiple * batch // (VALUE_SIZE + 6) + 1
    with us.Log(tmp_path / "log") as log:
        t = log.create_topic("big")
        vals = pa.array(make_values(min(n, 200_000)), pa.binary())
        for start in range(0, n, len(vals)):
            ua.append_arrow(t.partition(0), pa.table({"value": vals.slice(0, min(len(vals), n - start))}),
                            default_timestamp=1)
        size = sum(os.path.getsize(os.path.join(t.partition(0).path, f))
                   for f in os.listdir(t.partition(0).path) if f.endswith(".log"))
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(tmp_path / "log"),
                          str(tmp_path / "out.parquet"), str(batch)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows, before, peak = map(int, out.stdout.split())
    assert rows == n
    report.append(
        f"parquet export of a {size / 2**20:.0f} MiB topic ({multiple}x the {batch >> 20} MiB row group, "
        f"read in {ua.DEFAULT_BATCH_BYTES >> 20} MiB batches): "
        f"peak RSS {peak / 2**20:.0f} MiB, {(peak - before) / 2**20:.0f} MiB above the warmed-up process")
