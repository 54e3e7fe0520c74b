"""numpy benchmarks (issue 21), each beside a baseline measured in the same run.
Run with:  python -m pytest bench/test_numpy_bench.py -s

* partition_many of 10 M keys (numpy S array and Arrow binary array), beside
  the scalar partitioner called from a Python loop over the same keys, and
  beside the C partitioning inside append_arrow (ArrowSource.split). Aim:
  >= 50 M keys/s.
* 1 M offsets_for_times lookups in one call, beside offset_for_time called in
  a Python loop (over a 50 k sample of the same queries: the whole million
  would take minutes; the per-lookup rate is what is compared).
* Index views of a partition grown to 256 MiB, 512 MiB and 1 GiB: time and RSS
  of building them, beside reading the same index files into arrays
  (np.fromfile, a copy).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import textwrap
import time

import pytest

np = pytest.importorskip("numpy")
pa = pytest.importorskip("pyarrow")

import unstoppable as us  # noqa: E402
from unstoppable._core import arrow as _carrow  # noqa: E402
from unstoppable.arrow import ingest as _ingest  # noqa: E402

KEYS = 10_000_000
PARTITIONS = 64


@pytest.fixture(scope="module")
def keys():
    # 10 M distinct keys of 12 bytes, like ids: b"key-00000042".
    return np.char.add(b"key-", np.char.zfill(np.arange(KEYS).astype("S8"), 8))


def _best(fn, rounds=5):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


@pytest.mark.parametrize("name", ["murmur2", "xxh64"])
def test_partition_many_10m_keys(benchmark, keys, name, report):
    part = us.Murmur2Partitioner() if name == "murmur2" else us.DefaultPartitioner()
    arrow_keys = pa.array(keys.tolist(), pa.binary())
    key_list = arrow_keys.to_pylist()
    assert len(key_list) == KEYS

    out = benchmark.pedantic(lambda: part.partition_many(keys, PARTITIONS), rounds=5,
                             iterations=1, warmup_rounds=1)
    np_med = statistics.median(benchmark.stats.stats.data)
    _, ar_med = _best(lambda: part.partition_many(arrow_keys, PARTITIONS))
    _, li_med = _best(lambda: part.partition_many(key_list, PARTITIONS), rounds=3)

    # Baseline 1: the scalar partitioner (C per key) from a Python loop.
    t0 = time.perf_counter()
    scalar = [part(k, PARTITIONS) for k in key_list]
    loop_s = time.perf_counter() - t0
    assert out.tolist() == scalar

    # Baseline 2: the C partitioning append_arrow does today (partition and
    # group rows: ArrowSource.split over the key column).
    table = pa.table({"key": arrow_keys, "value": pa.nulls(KEYS, pa.binary())})
    src = _ingest._source(pa, table.to_batches(), "value", "key", None, None)
    mode = _carrow.PARTITION_MURMUR2 if name == "murmur2" else _carrow.PARTITION_XXH64
    _, sp_med = _best(lambda: src.split(PARTITIONS, mode), rounds=3)

    rate = KEYS / np_med
    benchmark.extra_info.update(keys_per_s_numpy=rate, keys_per_s_arrow=KEYS / ar_med,
                                keys_per_s_list=KEYS / li_med, scalar_loop_keys_per_s=KEYS / loop_s,
                                arrow_split_keys_per_s=KEYS / sp_med)
    report.append(
        f"partition_many {name}, 10 M keys of 12 B, {PARTITIONS} partitions: numpy S "
        f"{rate / 1e6:.1f} M keys/s, Arrow binary {KEYS / ar_med / 1e6:.1f} M keys/s, list of bytes "
        f"{KEYS / li_med / 1e6:.1f} M keys/s (medians); same run: scalar partitioner in a Python loop "
        f"{KEYS / loop_s / 1e6:.2f} M keys/s -> numpy {rate * loop_s / KEYS:.0f}x; append_arrow's "
        f"C split (hash + group rows) {KEYS / sp_med / 1e6:.1f} M keys/s; aim 50 M keys/s "
        f"{'met' if rate >= 50e6 else 'NOT met'} (numpy S; best round {KEYS / min(benchmark.stats.stats.data) / 1e6:.1f} "
        f"M keys/s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    assert rate * loop_s / KEYS >= 10  # far from a per-key Python call


@pytest.fixture(scope="module")
def time_log(tmp_path_factory):
    """2 M records of 100 B in 64 MiB segments; timestamps rise with jitter
    (records up to 50 ms out of order)."""
    d = tmp_path_factory.mktemp("oft") / "log"
    rng = np.random.default_rng(7)
    n, chunk = 2_000_000, 50_000
    ts = (1_700_000_000_000 + np.arange(n) * 3 + rng.integers(0, 50, n)).tolist()
    value = b"v" * 100
    log = us.Log(d)
    p = log.create_topic("t", segment_bytes=64 << 20).partition(0)
    for i in range(0, n, chunk):
        p.append([(None, value, None, t) for t in ts[i:i + chunk]])
    assert len(p.offset_index()) >= 3
    yield p, int(min(ts)), int(max(ts))
    log.close()


def test_offsets_for_times_1m(benchmark, time_log, report):
    p, lo, hi = time_log
    rng = np.random.default_rng(11)
    q = rng.integers(lo - 1000, hi + 1000, 1_000_000)
    out = benchmark.pedantic(lambda: p.offsets_for_times(q), rounds=3, iterations=1, warmup_rounds=1)
    med = statistics.median(benchmark.stats.stats.data)
    sample = q[:50_000].tolist()
    t0 = time.perf_counter()
    ref = [p.offset_for_time(t) for t in sample]
    loop_s = time.perf_counter() - t0
    assert out[:50_000].tolist() == [-1 if r is None else r for r in ref]
    per_vec, per_loop = med / q.size, loop_s / len(sample)
    benchmark.extra_info.update(lookups_per_s=q.size / med, scalar_loop_lookups_per_s=1 / per_loop)
    report.append(
        f"offsets_for_times, 1 M random timestamps over a 2 M-record partition (4 segments): "
        f"{med:.2f} s in one call = {q.size / med / 1e6:.2f} M lookups/s ({per_vec * 1e6:.2f} us each); "
        f"same run: offset_for_time in a Python loop (50 k sample) {1 / per_loop / 1e3:.1f} k lookups/s "
        f"({per_loop * 1e6:.1f} us each) -> {per_loop / per_vec:.0f}x")
    assert per_loop / per_vec >= 2


VIEWS_CHILD = textwrap.dedent("""
    import json, os, statistics, sys, time
    import numpy as np
    import unstoppable as us
    from unstoppable.storage.index_views import OFFSET_INDEX_DTYPE, TIME_INDEX_DTYPE

    def rss():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) << 10
        return out["RssAnon"], out["RssFile"]

    log = us.Log(sys.argv[1])
    p = log.topic("t").partition(0)
    p.offset_index(), p.time_index()   # first open validates each sealed index once
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        oi, ti = p.offset_index(), p.time_index()
        times.append(time.perf_counter() - t0)
    a0, f0 = rss()
    oi, ti = p.offset_index(), p.time_index()
    a1, f1 = rss()
    # Read every entry: the mapped pages come in as file pages (page cache), not copies.
    touched = sum(int(v["position"].sum()) for v in oi) + sum(int(v["timestamp"].max()) for v in ti if len(v))
    a2, f2 = rss()
    entries = oi.entries + ti.entries
    segs = len(oi)
    del oi, ti
    files = [os.path.join(p.path, f) for f in sorted(os.listdir(p.path))
             if f.endswith((".index", ".timeindex"))]
    b0, _ = rss()
    t0 = time.perf_counter()
    copies = [np.fromfile(f, dtype=OFFSET_INDEX_DTYPE if f.endswith(".index") else TIME_INDEX_DTYPE)
              for f in files]
    copy_s = time.perf_counter() - t0
    b1, _ = rss()
    print(json.dumps(dict(view_s=statistics.median(times), view_anon=a1 - a0, view_file=f1 - f0,
                          touch_anon=a2 - a1, touch_file=f2 - f1, entries=entries, segments=segs,
                          copy_s=copy_s, copy_anon=b1 - b0,
                          copy_bytes=sum(c.nbytes for c in copies))))
    log.close()
""")


def test_index_views_flat_as_the_partition_grows(tmp_path, report):
    """Views of every segment's two indexes (whole-partition form), at 256 MiB,
    512 MiB and 1 GiB of data (128 MiB segments, batches of at most 4 KiB, a
    1 KiB index interval and rising timestamps: an entry of each index per
    batch, 6 MiB of entries per GiB, so a copy would show). Measured in a
    fresh process each time (RssAnon: private memory, where a copy would
    go), beside np.fromfile of the same index files (a copy)."""
    import json
    d = tmp_path / "log"
    log = us.Log(d)
    p = log.create_topic("t", segment_bytes=128 << 20, index_interval_bytes=1024,
                         max_batch_bytes=4096).partition(0)
    value = b"x" * 1000
    per = 16_384                                   # 16 MiB of records per append
    rows = []
    grown = ts = 0
    for target in (256 << 20, 512 << 20, 1 << 30):
        while grown < target:
            p.append([(None, value, None, ts + i) for i in range(per)])
            ts += per
            grown += per * 1024
        r = subprocess.run([sys.executable, "-c", VIEWS_CHILD, str(d)], capture_output=True,
                           text=True, timeout=600, check=True)
        rows.append((target, json.loads(r.stdout)))
    log.close()
    for target, m in rows:
        report.append(
            f"index views, partition of {target >> 20} MiB ({m['segments']} segments, {m['entries']} "
            f"entries): {m['view_s'] * 1e3:.2f} ms, RssAnon +{m['view_anon'] >> 10} KiB; after reading "
            f"every entry RssAnon +{m['touch_anon'] >> 10} KiB; same run: np.fromfile copy of the "
            f"{m['copy_bytes'] >> 10} KiB of index files {m['copy_s'] * 1e3:.2f} ms, RssAnon "
            f"+{m['copy_anon'] >> 10} KiB")
    # Flat: no private memory for the views however large the partition, unlike the copy.
    assert all(m["view_anon"] < (256 << 10) and m["touch_anon"] < (256 << 10) for _, m in rows)
    assert rows[-1][1]["copy_anon"] > 4 << 20
