"""numpy: zero-copy index views, vectorized time lookups, partition_many.

Checked against the scalar APIs, against the index bytes decoded by the
independent reference decoder, and against the process's own memory map
(/proc/self/maps) to prove that the views are not copies.
"""
import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unstoppable as us
from unstoppable._core import hashing
from unstoppable.storage import index_views
from unstoppable.storage.index_views import (
    OFFSET_INDEX_DTYPE,
    TIME_INDEX_DTYPE,
    IndexArray,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import format_reference as fr  # noqa: E402
from _core.test_hashing import KAFKA_MURMUR2  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


# ---------------------------------------------------------------- helpers

def mapped_file_of(arr) -> str | None:
    """The path /proc/self/maps gives for the memory ``arr``'s data lies in."""
    addr = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return parts[5].strip() if len(parts) > 5 else ""
    return None


def fill(p, n_appends=300, seed=1, size=200):
    import random
    rng = random.Random(seed)
    for _ in range(n_appends):
        p.append([(b"k", b"x" * rng.randint(1, size), None, rng.randint(0, 10_000))
                  for _ in range(rng.randint(1, 5))])


@contextlib.contextmanager
def walk_thresholds(queries, window):
    old = index_views._WALK_MIN_QUERIES, index_views._WALK_MIN_WINDOW
    index_views._WALK_MIN_QUERIES, index_views._WALK_MIN_WINDOW = queries, window
    try:
        yield
    finally:
        index_views._WALK_MIN_QUERIES, index_views._WALK_MIN_WINDOW = old


def scalar_offsets(p, qs):
    return np.array([-1 if o is None else o for o in (p.offset_for_time(int(t)) for t in qs)],
                    dtype=np.int64)


# ------------------------------------------------------------ index views

def test_offset_and_time_index_views_equal_the_files(log):
    p = log.create_topic("t", segment_bytes=64 * 1024, index_interval_bytes=256).partition(0)
    fill(p)
    oi, ti = p.offset_index(), p.time_index()
    assert len(oi) == len(ti) >= 2, "the test needs several segments"
    bases = sorted(int(f[:20]) for f in os.listdir(p.path) if f.endswith(".log"))
    assert oi.bases.tolist() == ti.bases.tolist() == bases
    for v, w in zip(oi, ti):
        assert isinstance(v, IndexArray) and v.dtype == OFFSET_INDEX_DTYPE
        assert w.dtype == TIME_INDEX_DTYPE
        stem = os.path.join(p.path, "%020d" % v.base_offset)
        assert v.segment == stem + ".log"
        ref_oi = fr.read_offset_index(stem + ".index", len(v))
        ref_ti = fr.read_time_index(stem + ".timeindex", len(w))
        assert len(ref_oi) == len(v) > 0 and len(ref_ti) == len(w) > 0
        assert list(zip(v["relative_offset"].tolist(), v["position"].tolist())) == ref_oi
        assert list(zip(w["timestamp"].tolist(), w["relative_offset"].tolist(),
                        w["position"].tolist())) == ref_ti
        assert (v.offsets() == v.base_offset + v["relative_offset"].astype(np.int64)).all()
        # One segment asked for by its base is the same view.
        one = p.offset_index(v.base_offset)
        assert one.base_offset == v.base_offset and (one == v).all()
    # The active segment's view has exactly the head's entry count.
    st = p._state()
    assert len(oi[-1]) == st.oi_count and len(ti[-1]) == st.ti_count
    cat = oi.concatenate()
    assert cat["offset"].tolist() == np.concatenate([v.offsets() for v in oi]).tolist()
    assert (np.diff(cat["offset"]) > 0).all()
    tcat = ti.concatenate()
    assert tcat["timestamp"].tolist() == np.concatenate([w["timestamp"] for w in ti]).tolist()


def test_views_are_zero_copy_and_read_only(log):
    p = log.create_topic("t", segment_bytes=64 * 1024, index_interval_bytes=256).partition(0)
    fill(p)
    oi, ti = p.offset_index(), p.time_index()
    for v, w in zip(oi, ti):
        stem = os.path.join(p.path, "%020d" % v.base_offset)
        # The array's memory is the mapped index file itself.
        assert mapped_file_of(v) == stem + ".index"
        assert mapped_file_of(w) == stem + ".timeindex"
        assert mapped_file_of(v["position"]) == stem + ".index"
        assert not v.flags.writeable and not v.flags.owndata
        with pytest.raises(ValueError):
            v["position"][0] = 1
        with pytest.raises(ValueError):
            v.flags.writeable = True
        with pytest.raises(ValueError):
            w["timestamp"][:] = 0


def test_empty_and_new_partition_views(log):
    p = log.create_topic("t").partition(0)
    oi = p.offset_index()
    assert len(oi) == 1 and oi.entries == 0 and len(oi[0]) == 0 and oi[0].base_offset == 0
    assert not oi[0].flags.writeable
    assert p.offsets_for_times([0, 5]).tolist() == [-1, -1]
    p.append([b"a"], timestamp=7)
    assert len(p.time_index(0)) == 0  # the batch at position 0 never has an entry
    assert p.offsets_for_times(np.array([6, 7, 8])).tolist() == [0, 0, -1]


def test_view_bad_segment_argument(log):
    p = log.create_topic("t", segment_bytes=4096).partition(0)
    for i in range(100):
        p.append([b"v" * 100])
    bases = p.offset_index().bases.tolist()
    with pytest.raises(ValueError, match=f"not the base offset.*in segment {bases[1]}"):
        p.offset_index(bases[1] + 1)
    with pytest.raises(TypeError, match="segment must be"):
        p.time_index("0")
    with pytest.raises(TypeError, match="segment must be"):
        p.time_index(True)


def _rolled_partition(log, name="t"):
    p = log.create_topic(name, segment_bytes=8192, index_interval_bytes=128,
                         retention_bytes=40_000).partition(0)
    for i in range(60):
        p.append([(None, b"%05d" % i + b"-" * 95, None, 1000 + i)])
    assert p.start_offset == 0 and len(p.offset_index()) >= 2
    return p


def _mappings_of(path):
    with open("/proc/self/maps") as f:
        return [line for line in f if path in line]


def test_view_outlives_retention_in_this_process(log):
    p = _rolled_partition(log)
    v = p.offset_index(0)
    w = p.time_index(0)
    before_v, before_w = v.copy(), w.copy()
    assert len(v) > 5
    stem = os.path.join(p.path, "%020d" % 0)
    for i in range(60, 600):
        p.append([(None, b"%05d" % i + b"-" * 95, None, 1000 + i)])
    assert p.start_offset > 0
    assert not os.path.exists(stem + ".index")           # retention deleted the segment
    # The view still reads the entries it was made with, from the mapping of
    # the deleted file, which it keeps alive.
    assert (v == before_v).all() and (w == before_w).all()
    assert mapped_file_of(v) == stem + ".index (deleted)"
    with pytest.raises(us.OffsetOutOfRangeError, match="deleted by retention|not the base"):
        p.offset_index(0)
    assert 0 not in p.offset_index().bases.tolist()
    # Dropping the views unmaps the deleted file.
    del v, w
    gc.collect()
    assert not [m for m in _mappings_of(stem + ".index") if "(deleted)" in m]


def test_view_outlives_retention_by_another_process(log_dir):
    log = us.Log(log_dir)
    p = _rolled_partition(log)
    v, w = p.offset_index(0), p.time_index(0)
    before_v, before_w = v.copy(), w.copy()
    stem = os.path.join(p.path, "%020d" % 0)
    child = textwrap.dedent(f"""
        import unstoppable as us
        log = us.Log({str(log_dir)!r})
        p = log.topic("t").partition(0)
        for i in range(60, 600):
            p.append([(None, b"%05d" % i + b"-" * 95, None, 1000 + i)])
        assert p.start_offset > 0, p.start_offset
        log.close()
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": SRC})
    assert not os.path.exists(stem + ".index") and not os.path.exists(stem + ".log")
    assert (v == before_v).all() and (w == before_w).all()
    assert mapped_file_of(w) == stem + ".timeindex (deleted)"
    # This process sees the deletion too.
    assert p.start_offset > 0
    assert 0 not in p.time_index().bases.tolist()
    with pytest.raises(us.OffsetOutOfRangeError):
        p.time_index(0)
    log.close()
    # Closing the log does not pull the memory from under a view either.
    assert (v == before_v).all()


# ------------------------------------------------------ offsets_for_times

def test_offsets_for_times_equals_scalar_on_a_rolled_partition(log):
    p = log.create_topic("t", segment_bytes=64 * 1024, index_interval_bytes=256).partition(0)
    fill(p, n_appends=400, seed=3)
    qs = np.arange(-3, 10_005)
    ref = scalar_offsets(p, qs)
    assert (p.offsets_for_times(qs) == ref).all()
    for walk in ((10**9, 1 << 40), (1, 0)):
        with walk_thresholds(*walk):
            assert (p.offsets_for_times(qs) == ref).all(), walk
    # Shapes are kept, duplicates and any order allowed, datetime64 accepted.
    q2 = np.array([[5000, 5], [5000, 10_001]])
    assert p.offsets_for_times(q2).tolist() == scalar_offsets(p, q2.ravel()).reshape(2, 2).tolist()
    dt = np.array([5000, 12], dtype="datetime64[ms]")
    assert p.offsets_for_times(dt).tolist() == scalar_offsets(p, [5000, 12]).tolist()
    assert p.offsets_for_times(np.array([5000], dtype=np.uint16)).tolist() == \
        scalar_offsets(p, [5000]).tolist()


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=6), min_size=1, max_size=80),
       sizes=st.integers(1, 300), interval=st.sampled_from([1, 64, 300, 4096]),
       retain=st.booleans(), extra=st.lists(st.integers(-10, 320), max_size=30))
def test_offsets_for_times_equals_brute_force(tmp_path_factory, batches, sizes, interval, retain, extra):
    """Record timestamps in any order (Kafka allows it); the answer for every
    query equals the scalar lookup and a brute force over all records."""
    d = tmp_path_factory.mktemp("oft")
    cfg = dict(segment_bytes=4096, index_interval_bytes=interval)
    if retain:
        cfg["retention_bytes"] = 6000
    with us.Log(d) as log:
        p = log.create_topic("t", **cfg).partition(0)
        for b in batches:
            p.append([(None, b"v" * sizes, None, t) for t in b])
        recs = []
        off = p.start_offset
        while off < p.end_offset:
            got = p.read(off, max_records=1000)
            recs += [(r.offset, r.timestamp) for r in got]
            off = got[-1].offset + 1
        qs = sorted({t for _, t in recs} | {t + 1 for _, t in recs} | {t - 1 for _, t in recs}
                    | set(extra))
        brute = [next((o for o, t in recs if t >= q), -1) for q in qs]
        assert scalar_offsets(p, qs).tolist() == brute
        # Both ways of answering a group of queries: find_time per query, and
        # decoding the group's batches once.
        for walk in ((10**9, 1 << 40), (1, 0)):
            with walk_thresholds(*walk):
                got = p.offsets_for_times(np.array(qs, dtype=np.int64))
            assert got.tolist() == brute, walk


@pytest.mark.parametrize("bad,exc,match", [
    (np.array([1.5]), TypeError, "dtype float64"),
    (np.array([1.0, np.nan]), ValueError, "NaN at index 1"),
    ([1, None], TypeError, "dtype object"),
    (["1"], TypeError, "dtype <U1"),
    ("123", TypeError, "got str"),
    (np.array([True]), TypeError, "dtype bool"),
    (np.array([2**64 - 1], dtype=np.uint64), ValueError, "do not fit int64"),
    (np.array(["NaT", "2020-01-01"], dtype="datetime64[ms]"), ValueError, "NaT at index 0"),
])
def test_offsets_for_times_bad_timestamps(log, bad, exc, match):
    p = log.create_topic("t").partition(0)
    p.append([b"a"], timestamp=1)
    with pytest.raises(exc, match=match):
        p.offsets_for_times(bad)


def test_consumer_offsets_for_times_arrays(log):
    t = log.create_topic("t", partitions=2, segment_bytes=4096, index_interval_bytes=64)
    for i in range(2):
        fill(t.partition(i), n_appends=100, seed=i, size=60)
    qs = np.arange(0, 10_002, 7)

    async def main():
        async with us.Consumer(log, "t") as c:
            tps = [us.TopicPartition("t", 0), us.TopicPartition("t", 1)]
            got = await c.offsets_for_times({tps[0]: qs, tps[1]: qs.tolist()})
            scalar = await c.offsets_for_times({tps[0]: 5005})
            with pytest.raises(ValueError, match="t/1: timestamps hold NaN"):
                await c.offsets_for_times({tps[1]: np.array([np.nan])})
            with pytest.raises(ValueError, match="must be ms >= 0"):
                await c.offsets_for_times({tps[1]: [-1]})
            return tps, got, scalar

    tps, got, scalar = asyncio.run(main())
    for i, tp in enumerate(tps):
        assert got[tp].dtype == np.int64
        assert got[tp].tolist() == scalar_offsets(t.partition(i), qs).tolist()
    assert scalar[tps[0]].offset == got[tps[0]][qs.tolist().index(5005)]


# -------------------------------------------------------- partition_many

PARTITIONERS = [(us.DefaultPartitioner(), hashing.xxh64_partition),
                (us.Murmur2Partitioner(), hashing.murmur2_partition)]


def key_forms(keys):
    """The same keys as each accepted input type."""
    yield "list", list(keys)
    yield "tuple", tuple(keys)
    yield "bytearrays", [bytearray(k) for k in keys]
    yield "object array", np.array(keys + [b""], dtype=object)[:-1]
    yield "arrow binary", pa.array(keys, pa.binary())
    yield "arrow large_binary", pa.array(keys, pa.large_binary())
    yield "arrow sliced", pa.array([b"x"] + keys, pa.binary()).slice(1)
    yield "arrow chunked", pa.chunked_array([pa.array(keys[:len(keys) // 2], pa.binary()),
                                             pa.array(keys[len(keys) // 2:], pa.binary())],
                                            pa.binary())
    if not any(k.endswith(b"\0") for k in keys) and keys:
        yield "numpy S", np.array(keys, dtype="S")
        yield "numpy S strided", np.array([x for k in keys for x in (k, b"pad")], dtype="S")[::2]


def test_partition_many_kafka_vectors():
    keys = [k for k, _ in KAFKA_MURMUR2]
    for n in (1, 2, 3, 7, 100, 2**31 - 1):
        expect = [(h & 0x7FFFFFFF) % n for _, h in KAFKA_MURMUR2]
        for form, ks in key_forms(keys):
            got = us.Murmur2Partitioner().partition_many(ks, n)
            assert got.dtype == np.int32 and got.tolist() == expect, form


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=50), st.integers(1, 2**31 - 1))
def test_partition_many_matches_scalar(keys, n):
    for part, scalar in PARTITIONERS:
        expect = [scalar(k, n) for k in keys]
        for form, ks in key_forms(keys):
            got = part.partition_many(ks, n)
            assert got.dtype == np.int32 and got.shape == (len(keys),), form
            assert got.tolist() == expect, form
        # Arrow string keys hash as their UTF-8 bytes; numpy S drops trailing NULs.
        strs = [k.decode("latin-1") for k in keys]
        assert part.partition_many(pa.array(strs, pa.string()), n).tolist() == \
            [scalar(s.encode(), n) for s in strs]
        if keys:
            assert part.partition_many(np.array(keys, dtype="S"), n).tolist() == \
                [scalar(k.rstrip(b"\0"), n) for k in keys]


def test_partition_many_releases_the_gil():
    """With a huge switch interval, the main thread keeps the GIL until it
    blocks or a C call releases it; a helper thread that sleeps 0.2 ms between
    steps can only step while the main thread is inside such a call. The
    control (crc32c_software, which holds the GIL) must see no step."""
    keys = np.array([b"key-%08d" % i for i in range(3_000_000)])
    blob = bytes(50 << 20)
    ticks = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.0002)

    old = sys.getswitchinterval()
    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        sys.setswitchinterval(100.0)
        # A switch requested under the old interval may still be pending: a
        # short sleep lets it happen now, not inside the control below.
        time.sleep(0.01)
        before = ticks[0]
        hashing.crc32c_software(blob)
        held = ticks[0] - before
        before = ticks[0]
        out = us.DefaultPartitioner().partition_many(keys, 16)
        released = ticks[0] - before
        before = ticks[0]
        out_m = us.Murmur2Partitioner().partition_many(pa.array(keys.tolist()), 16)
        released_arrow = ticks[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
        t.join()
    assert held == 0, "the control call holds the GIL; the helper must not have run"
    assert released > 0 and released_arrow > 0, (released, released_arrow)
    assert out[:5].tolist() == [hashing.xxh64_partition(bytes(k), 16) for k in keys[:5]]
    assert out_m[-5:].tolist() == [hashing.murmur2_partition(bytes(k), 16) for k in keys[-5:]]


@pytest.mark.parametrize("keys,exc,match", [
    ([b"a", None], TypeError, r"keys\[1\] is NoneType"),
    ([b"a", "b"], TypeError, r"keys\[1\] is str"),
    ([b"a", 5], TypeError, r"keys\[1\] is int"),
    (np.array([1, 2]), TypeError, "dtype int64"),
    (np.array(["a"]), TypeError, "dtype <U1"),
    (np.zeros((2, 2), "S2"), ValueError, "1-d array, got 2"),
    (pa.array([b"a", None, b"c"]), ValueError, "row 1 is null"),
    (pa.chunked_array([[b"a"], [b"b", None]]), ValueError, "row 2 is null"),
    (pa.array([1, 2]), TypeError, "Arrow array of type int64"),
    (pa.table({"k": [b"a"]}), TypeError, "cannot be partitioned"),
    ("abc", TypeError, "got str"),
    (b"abc", TypeError, "got bytes"),
    ({b"a"}, TypeError, "got set"),
])
def test_partition_many_bad_keys(keys, exc, match):
    for part, _ in PARTITIONERS:
        with pytest.raises(exc, match=match):
            part.partition_many(keys, 4)


@pytest.mark.parametrize("n,exc,match", [
    (0, ValueError, "must be positive, got 0"),
    (-3, ValueError, "must be positive, got -3"),
    (True, TypeError, "got bool"),
    (2.0, TypeError, "got float"),
    (2**31, ValueError, "at most 2147483647"),
])
def test_partition_many_bad_count(n, exc, match):
    for part, _ in PARTITIONERS:
        with pytest.raises(exc, match=match):
            part.partition_many([b"a"], n)


def test_partition_many_empty_and_numpy_count():
    for part, scalar in PARTITIONERS:
        assert part.partition_many([], 3).tolist() == []
        assert part.partition_many(pa.array([], pa.binary()), 3).dtype == np.int32
        assert part.partition_many([b""], np.int64(5)).tolist() == [scalar(b"", 5)]


# ------------------------------------------------------- numpy is optional

def test_import_without_numpy(tmp_path):
    """``import unstoppable`` and the whole storage API work when numpy
    cannot be imported; the numpy features name the extra to install."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "numpy" or name.startswith("numpy."):
                    raise ImportError("numpy blocked for this test")
        sys.meta_path.insert(0, Block())
        import unstoppable as us
        with us.Log({str(tmp_path / "log")!r}) as log:
            p = log.create_topic("t").partition(0)
            p.append([b"a", b"b"], timestamp=5)
            assert p.offset_for_time(5) == 0
            for call in (p.offset_index, p.time_index, lambda: p.offsets_for_times([1]),
                         lambda: us.Murmur2Partitioner().partition_many([b"a"], 2),
                         lambda: us.DefaultPartitioner().partition_many([b"a"], 2)):
                try:
                    call()
                except ImportError as e:
                    assert "pip install 'unstoppable[numpy]'" in str(e), e
                else:
                    raise AssertionError("no ImportError")
        assert "numpy" not in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_view_of_an_index_truncated_by_someone_else_reads_zeros(tmp_path):
    """Not the library's doing, but never a crash: a view over an index file
    that another program cut short reads zeros where the pages went (the
    SIGBUS guard), in a child process so that a failure cannot take pytest down."""
    code = textwrap.dedent(f"""
        import os, unstoppable as us
        from unstoppable._core.segment import sigbus_absorbed
        with us.Log({str(tmp_path / "log")!r}) as log:
            p = log.create_topic("t", segment_bytes=1 << 20, index_interval_bytes=64).partition(0)
            for i in range(2000):
                p.append([(None, b"v" * 100, None, i)])
            v = p.offset_index(0)
            n = len(v)
            assert n > 1000 and v["position"][-1] > 0
            os.truncate(v.segment[:-4] + ".index", 0)
            assert int(v["position"].sum()) == 0, v[:3]
            assert sigbus_absorbed() > 0
        print("ok", n)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0 and r.stdout.startswith("ok"), (r.returncode, r.stderr)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 65537, 2**30, 2**31 - 3, 2**31 - 1])
def test_partition_many_remainders_for_every_kind_of_count(n):
    """The loops compute remainders without a divide (csrc/fastmod.h): check
    them against the scalar partitioners' ``%`` for counts of every shape."""
    import random
    rng = random.Random(n)
    keys = [rng.randbytes(rng.randint(0, 30)) for _ in range(20_000)]
    for part, scalar in PARTITIONERS:
        assert part.partition_many(keys, n).tolist() == [scalar(k, n) for k in keys]
