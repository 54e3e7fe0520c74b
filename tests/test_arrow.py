"""Arrow export and ingest (unstoppable.arrow) against real logs on disk.

The references are independent of the Arrow code: the record-by-record
reader (``Partition.read``), the Python BatchEncoder, the struct-only format
decoder (tests/format_reference.py), and protobuf / json decoding of each
value on its own.
"""
from __future__ import annotations

import datetime as dt
import importlib.machinery
import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pc = pytest.importorskip("pyarrow.compute")

import unstoppable as us  # noqa: E402
from unstoppable import arrow as ua  # noqa: E402
from unstoppable.arrow import ingest as ua_ingest  # noqa: E402
from unstoppable._core import arrow as core_arrow  # noqa: E402
from unstoppable._core.batch import BatchEncoder  # noqa: E402
from unstoppable._core.hashing import murmur2_partition, xxh64_partition  # noqa: E402
from unstoppable.errors import (  # noqa: E402
    InvalidRecordError, PartitionOutOfRangeError, RecordTooLargeError, ValueDecodeError)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import format_reference as fr  # noqa: E402

assert core_arrow.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))

HEADERS = ua.header_type()


def _records(p, start=0, end=None):
    """(offset, timestamp, key, value, headers) of every record, read one by one."""
    end = p.end_offset if end is None else end
    out, off = [], start
    while off < end:
        for r in p.read(off, max_records=1000):
            if r.offset >= end:
                break
            out.append((r.offset, r.timestamp, None if r.key is None else bytes(r.key),
                        None if r.value is None else bytes(r.value), r.headers))
        off = out[-1][0] + 1 if out else end
    return out


def _rows(table):
    """The same tuples from an exported table."""
    d = table.select(["offset", "key", "value", "headers"]).to_pydict()
    ts = table.column("timestamp").cast(pa.int64()).to_pylist()
    return [(o, t, k, v, [(h["key"], h["value"]) for h in hs])
            for o, t, k, v, hs in zip(d["offset"], ts, d["key"], d["value"], d["headers"])]


def _input_table():
    """Every kind of cell: null and empty keys/values, headers with null values."""
    return pa.table({
        "key": pa.array([b"k0", None, b"", b"k3", None, b"k5"], pa.binary()),
        "value": pa.array([b"v0", b"", None, b"x" * 300, b"v4", b"v5"], pa.binary()),
        "ts": pa.array([5, 6, 7, 7, 3, 1 << 40], pa.int64()),
        "headers": pa.array([[], [("a", b"1")], [("b", None), ("c", b"")], None,
                             [("\u00e9t\u00e9", b"\x00\xff")], []], HEADERS),
    })


# ---------------------------------------------------------------------------
# Export


def test_export_matches_record_reader(log):
    t = log.create_topic("t", partitions=2, max_batch_bytes=1024)
    p0, p1 = t.partition(0), t.partition(1)
    p0.append([b"plain", (b"k", b"v"), (None, None), (b"", b"", [("h", b"x"), ("n", None)]),
               (b"key", b"y" * 2000, {"a": b"b"}, 99)], timestamp=1000)
    for i in range(50):
        p1.append([(str(i).encode(), os.urandom(i * 13 % 700))], timestamp=2000 + i)
    table = ua.to_arrow(t)
    assert table.schema == ua.SCHEMA
    assert table.column_names == ["partition", "offset", "timestamp", "key", "value", "headers"]
    assert table.column("partition").to_pylist() == [0] * 5 + [1] * 50
    n0 = 5
    assert _rows(table.slice(0, n0)) == _records(p0)
    assert _rows(table.slice(n0)) == _records(p1)
    assert table.validate(full=True) is None
    # The same through the Topic method and a Partition source.
    assert t.to_arrow().equals(table)
    assert ua.to_arrow(p1).equals(table.slice(n0))


def test_export_empty_and_batches_small(log):
    t = log.create_topic("t", partitions=3)
    empty = ua.to_arrow(t)
    assert empty.num_rows == 0 and empty.schema == ua.SCHEMA
    assert list(ua.to_batches(t)) == []
    p = t.partition(1)
    p.append([bytes([i]) * i for i in range(200)], timestamp=7)
    # batch_bytes smaller than one log batch: one log batch per Arrow batch.
    reader = ua.to_batches(t, batch_bytes=1)
    chunks = list(reader)
    assert len(chunks) == 1
    assert _rows(pa.Table.from_batches(chunks)) == _records(p)


def test_large_binary_export(log):
    p = log.create_topic("t").partition(0)
    p.append([(b"k", b"v" * i) for i in range(100)], timestamp=1)
    table = ua.to_arrow(p, large=True)
    assert table.schema.field("value").type == pa.large_binary()
    assert table.schema.field("key").type == pa.large_binary()
    assert _rows(table) == _records(p)


def test_offset_ranges_cut_inside_batches(log):
    t = log.create_topic("t", partitions=2, max_batch_bytes=1024)
    p = t.partition(0)
    for k in range(7):  # batches of varying sizes: 1, 3, 5, ... records
        p.append([os.urandom(50) for _ in range(2 * k + 1)], timestamp=10 * k)
    end = p.end_offset
    ref = _records(p)
    for lo in range(0, end + 2, 3):
        for hi in list(range(lo, end + 2, 4)) + [None]:
            for batch_bytes in (1, 300, 1 << 20):
                table = ua.to_arrow(t, start=lo, end=hi, partitions=[0], batch_bytes=batch_bytes)
                want = [r for r in ref if r[0] >= lo and (hi is None or r[0] < hi)]
                assert _rows(table) == want, (lo, hi, batch_bytes)
    # Per-partition bounds, clamping and an empty range.
    t.partition(1).append([b"a", b"b", b"c"], timestamp=1)
    table = ua.to_arrow(t, start={0: end - 1, 1: 2}, end={0: end + 100})
    assert table.column("partition").to_pylist() == [0, 1]
    assert table.column("offset").to_pylist() == [end - 1, 2]
    assert ua.to_arrow(t, start=5, end=2).num_rows == 0
    assert ua.to_arrow(t, start=-10, end=1).column("offset").to_pylist() == [0, 0]


def test_time_ranges(log):
    t = log.create_topic("t", partitions=2, max_batch_bytes=1024)
    p0, p1 = t.partition(0), t.partition(1)
    for i in range(60):
        p0.append([(None, os.urandom(30), None, 1_000 + 10 * i)])  # 1000, 1010, ... 1590
    p1.append([(None, b"x", None, 1_000 + 7 * i) for i in range(100)])  # 1000 .. 1693
    tab = ua.to_arrow(t, start_time=1_200, end_time=1_300)
    got = tab.to_pydict()
    epoch = dt.datetime(1970, 1, 1)
    ts = [(x - epoch) // dt.timedelta(milliseconds=1) for x in got["timestamp"]]
    want0 = [1_000 + 10 * i for i in range(60) if 1_200 <= 1_000 + 10 * i < 1_300]
    want1 = [1_000 + 7 * i for i in range(100) if 1_200 <= 1_000 + 7 * i < 1_300]
    assert ts == want0 + want1
    assert got["offset"][0] == 20 and got["offset"][len(want0)] == 29  # 1200 = 1000 + 10*20
    # Bounds between timestamps, before everything, after everything; datetimes.
    assert ua.to_arrow(t, start_time=1_205, end_time=1_211, partitions=0) \
        .column("offset").to_pylist() == [21]
    assert ua.to_arrow(t, end_time=0).num_rows == 0
    assert ua.to_arrow(t, start_time=10**12).num_rows == 0
    assert ua.to_arrow(t, start_time=dt.datetime(1970, 1, 1, 0, 0, 1, 580_000),
                       partitions=[0]).column("offset").to_pylist() == [58, 59]
    aware = dt.datetime(1970, 1, 1, 1, 0, 1, 580_000, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert ua.to_arrow(t, start_time=aware, partitions=[0]).num_rows == 2
    # Offsets and times together: the intersection.
    assert ua.to_arrow(t, start=25, start_time=1_200, end_time=1_300, partitions=[0]) \
        .column("offset").to_pylist() == list(range(25, 30))


def test_export_argument_errors(log):
    t = log.create_topic("t", partitions=2)
    with pytest.raises(PartitionOutOfRangeError, match="partitions 0 .. 1, not 2"):
        ua.to_arrow(t, partitions=[0, 2])
    with pytest.raises(PartitionOutOfRangeError, match=r"start names partition\(s\) \[1\]"):
        ua.to_arrow(t, partitions=[0], start={1: 0})
    with pytest.raises(TypeError, match="start must be an int offset"):
        ua.to_arrow(t, start="0")
    with pytest.raises(TypeError, match="start_time must be an int of ms"):
        ua.to_arrow(t, start_time=1.5)
    with pytest.raises(ValueError, match="batch_bytes"):
        ua.to_arrow(t, batch_bytes=0)
    with pytest.raises(TypeError, match="expected a Topic or a Partition"):
        ua.to_arrow("t")
    with pytest.raises(ValueError, match="a Partition was given"):
        ua.to_arrow(t.partition(0), partitions=[0])


def test_export_after_retention_starts_at_log_start(log):
    t = log.create_topic("t", segment_bytes=4096, retention_bytes=8192, max_batch_bytes=1024)
    p = t.partition(0)
    for i in range(40):
        p.append([os.urandom(400)], timestamp=i)
    assert t.enforce_retention() > 0
    assert p.start_offset > 0
    table = ua.to_arrow(t, start=0)
    assert table.column("offset").to_pylist() == list(range(p.start_offset, p.end_offset))
    assert _rows(table) == _records(p, p.start_offset)


# ---------------------------------------------------------------------------
# Ingest


def test_round_trip_partition(log):
    p = log.create_topic("t").partition(0)
    table = _input_table()
    first = ua.append_arrow(p, table, timestamp="ts", headers="headers")
    assert first == 0 and p.end_offset == 6
    out = ua.to_arrow(p)
    assert out.column("key").equals(table.column("key"))
    assert out.column("value").equals(table.column("value"))
    assert out.column("timestamp").cast(pa.int64()).equals(table.column("ts"))
    want_headers = [h or [] for h in table.column("headers").to_pylist()]
    assert out.column("headers").to_pylist() == want_headers
    # Re-ingesting an export reproduces it (offsets aside).
    p2 = log.create_topic("t2").partition(0)
    ua.append_arrow(p2, out, timestamp="timestamp", headers="headers")
    again = ua.to_arrow(p2)
    assert again.drop_columns(["partition"]).equals(out.drop_columns(["partition"]))


def test_ingest_matches_python_encoder_byte_for_byte():
    """The C ingest encodes exactly what BatchEncoder encodes for the same
    records, batch splitting included."""
    rows = [(b"k%d" % i if i % 3 else None, os.urandom(i % 97) if i % 5 else b"",
             [("h", b"%d" % i)] if i % 4 == 0 else [], 1000 + (i * 7919) % 500)
            for i in range(3000)]
    table = pa.table({
        "key": [r[0] for r in rows], "value": [r[1] for r in rows],
        "headers": pa.array([r[2] for r in rows], HEADERS),
        "ts": pa.array([r[3] for r in rows], pa.timestamp("ms")),
    })
    for max_batch in (256, 4096, 1 << 20):
        py = BatchEncoder(max_batch)
        py.encode([(k, v, h or None, ts) for k, v, h, ts in rows], 1)
        src = ua_ingest._source(pa, table.to_batches(), "value", "key", "ts", "headers")
        c = core_arrow.ArrowEncoder(max_batch)
        assert c.encode(src[:], 1) == len(rows)
        assert (c.records, c.batches, c.max_timestamp, c.first_timestamp) == \
            (py.records, py.batches, py.max_timestamp, py.first_timestamp)
        assert bytes(c.view()) == bytes(py.view())
        # Encoding in two halves continues the same buffer.
        c.clear()
        c.encode(src[:1000], 1)
        c.encode(src[1000:], 1)
        assert c.records == len(rows)
    c.set_base_offset(0)
    decoded = [r for b in fr.decode_batches(bytes(c.view())) for r in b.records]
    assert [(r.key, r.value, r.headers, r.timestamp) for r in decoded] == rows


def test_large_ingest_is_pipelined_atomic_and_rolls_segments(log):
    """Above the streaming threshold the rows go through append_stream: across
    several segments, read back exactly, and the files pass the reference decoder."""
    t = log.create_topic("t", segment_bytes=1 << 20, max_batch_bytes=64 << 10)
    p = t.partition(0)
    p.append([b"before"], timestamp=1)
    n = 50_000
    values = [os.urandom(10) + i.to_bytes(4, "little") * (i % 16) for i in range(n)]
    table = pa.table({"value": pa.array(values, pa.large_binary()),
                      "key": pa.array([b"%d" % (i % 100) for i in range(n)], pa.string())})
    first = ua.append_arrow(p, table, default_timestamp=12345)
    assert first == 1 and p.end_offset == n + 1
    fp = fr.read_partition(p.path)
    assert len(fp.segments) > 2
    recs = fp.records()[1:]
    assert [r.value for r in recs] == values
    assert all(r.timestamp == 12345 and r.key == b"%d" % (i % 100) for i, r in enumerate(recs))
    out = ua.to_arrow(p, start=1)
    assert out.column("value").to_pylist() == values


def test_failed_large_ingest_leaves_nothing(log):
    """A bad row near the end of a pipelined ingest: earlier chunks were
    already written, and all of it is cut back off."""
    t = log.create_topic("t", segment_bytes=256 << 10, max_batch_bytes=16 << 10)
    p = t.partition(0)
    p.append([b"keep"], timestamp=1)
    n = 30_000
    ts = pa.array(list(range(n - 1)) + [-1], pa.int64())
    with pytest.raises(InvalidRecordError, match=f"row {n - 1}: timestamp -1"):
        ua.append_arrow(p, pa.table({"value": [b"x" * 40] * n, "ts": ts}), timestamp="ts")
    assert p.end_offset == 1
    assert [r.value for r in fr.read_partition(p.path).records()] == [b"keep"]
    assert ua.append_arrow(p, pa.table({"value": [b"y"] * n})) == 1
    assert p.end_offset == n + 1


def test_sliced_and_chunked_inputs(log):
    """Arrays with offsets (slices, chunked columns, sliced lists of headers)."""
    p = log.create_topic("t").partition(0)
    base = _input_table()
    table = pa.concat_tables([base.slice(1, 4), base.slice(2), base.slice(0, 1)])
    ua.append_arrow(p, table, timestamp="ts", headers="headers")
    out = ua.to_arrow(p)
    assert out.column("value").to_pylist() == table.column("value").to_pylist()
    assert out.column("key").to_pylist() == table.column("key").to_pylist()
    assert out.column("headers").to_pylist() == [h or [] for h in table.column("headers").to_pylist()]
    assert out.column("timestamp").cast(pa.int64()).to_pylist() == table.column("ts").to_pylist()


def test_ingest_column_types(log):
    p = log.create_topic("t").partition(0)
    table = pa.table({
        "v": pa.array(["s1", None, "s3"], pa.large_string()),
        "k": pa.array([b"a", b"b", None], pa.binary()).dictionary_encode(),
        "t": pa.array([1_500_000, 2_000_000, None], pa.timestamp("us")),
        "h": pa.array([[("x", b"1")], [], None], pa.map_(pa.string(), pa.binary())),
    })
    ua.append_arrow(p, table, value="v", key="k", timestamp="t", headers="h",
                    default_timestamp=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    recs = _records(p)
    assert [(k, v, h) for _, _, k, v, h in recs] == [
        (b"a", b"s1", [("x", b"1")]), (b"b", None, []), (None, b"s3", [])]
    assert [r[1] for r in recs] == [1500, 2000, 1577836800000]
    # Seconds and integer ms; views and fixed-size binary are cast.
    p2 = log.create_topic("t2").partition(0)
    ua.append_arrow(p2, pa.table({
        "value": pa.array([b"ab", b"cd"], pa.binary(2)),
        "key": pa.array(["x", "y"], pa.string_view()),
        "ts": pa.array([3, 4], pa.timestamp("s")),
    }), timestamp="ts")
    assert [(r[1], r[2], r[3]) for r in _records(p2)] == [(3000, b"x", b"ab"), (4000, b"y", b"cd")]


def test_topic_split_by_key_hash_column_and_callable(log):
    n = 4
    t = log.create_topic("t", partitions=n)
    keys = [b"user-%d" % (i % 37) for i in range(2000)]
    keys[::50] = [None] * len(keys[::50])
    table = pa.table({"key": keys, "value": [b"%d" % i for i in range(2000)]})
    firsts = ua.append_arrow(t, table)
    assert sorted(firsts) == list(range(n))
    nul = 0
    want = {i: [] for i in range(n)}
    for i, k in enumerate(keys):
        if k is None:
            want[nul % n].append(b"%d" % i)
            nul += 1
        else:
            want[xxh64_partition(k, n)].append(b"%d" % i)  # the Producer's default
    for i in range(n):
        assert [r[3] for r in _records(t.partition(i))] == want[i]

    t2 = log.create_topic("t2", partitions=n)
    ua.append_arrow(t2, table, partitioner="murmur2")
    for i in range(n):
        got = [r[2] for r in _records(t2.partition(i))]
        assert all(k is None or murmur2_partition(k, n) == i for k in got)
    assert sum(p.end_offset for p in t2) == 2000

    t3 = log.create_topic("t3", partitions=n)
    parts = pa.array([i % 3 for i in range(2000)], pa.int8())
    out = ua.append_arrow(t3, table.append_column("p", parts), partition="p")
    assert out == {0: 0, 1: 0, 2: 0}
    assert [p.end_offset for p in t3] == [667, 667, 666, 0]
    assert _rows(ua.to_arrow(t3, partitions=1)) == _records(t3.partition(1))

    t4 = log.create_topic("t4", partitions=n)
    ua.append_arrow(t4, table, partitioner=lambda k, n: len(k) % n)
    for i in range(n):
        assert all(k is None or len(k) % n == i for _, _, k, _, _ in _records(t4.partition(i)))
    # The Producer's partitioner objects map to the C hashes.
    t5 = log.create_topic("t5", partitions=n)
    ua.append_arrow(t5, table, partitioner=us.Murmur2Partitioner())
    assert [p.end_offset for p in t5] == [p.end_offset for p in t2]


def test_ingest_errors_name_the_problem(log):
    t = log.create_topic("t", partitions=2, max_record_bytes=1000)
    p = t.partition(0)
    table = pa.table({"value": [b"a", b"b"], "n": [1, 2]})
    with pytest.raises(ValueError, match=r"no value column 'val'; the columns are \['value', 'n'\]"):
        ua.append_arrow(p, table, value="val")
    with pytest.raises(TypeError, match="value column 'n' has type int64"):
        ua.append_arrow(p, table, value="n")
    with pytest.raises(TypeError, match="timestamp column 'value' has type binary"):
        ua.append_arrow(p, table, timestamp="value")
    with pytest.raises(TypeError, match="headers column 'n' has type int64"):
        ua.append_arrow(p, table, headers="n")
    with pytest.raises(InvalidRecordError, match=r"row 1: timestamp -5"):
        ua.append_arrow(p, table.append_column("ts", pa.array([1, -5])), timestamp="ts")
    with pytest.raises(InvalidRecordError, match=r"row 0: timestamp"):
        ua.append_arrow(p, table.append_column("ts", pa.array([1 << 62, 0])), timestamp="ts")
    with pytest.raises(InvalidRecordError, match=r"row 0: timestamp"):
        ua.append_arrow(p, table.append_column(
            "ts", pa.array([1 << 60, 0], pa.timestamp("s"))), timestamp="ts")
    with pytest.raises(RecordTooLargeError, match=r"row 1 encodes to \d+ bytes"):
        ua.append_arrow(p, pa.table({"value": [b"a", b"x" * 2000]}))
    hdr = pa.array([[("k", b"v")], [(None, b"v")]],
                   pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())])))
    with pytest.raises(InvalidRecordError, match="row 1: a header key is null"):
        ua.append_arrow(p, table.append_column("h", hdr), headers="h")
    with pytest.raises(PartitionOutOfRangeError, match=r"row 1: partition 2 is outside 0 .. 1"):
        ua.append_arrow(t, table.append_column("p", pa.array([0, 2])), partition="p")
    with pytest.raises(ValueError, match="partition column 'p' has 1 null"):
        ua.append_arrow(t, table.append_column("p", pa.array([0, None])), partition="p")
    with pytest.raises(ValueError, match="returned 7"):
        ua.append_arrow(t, pa.table({"key": [b"a"], "value": [b"b"]}), partitioner=lambda k, n: 7)
    with pytest.raises(ValueError, match="the target is one Partition"):
        ua.append_arrow(p, table, partitioner="murmur2")
    with pytest.raises(TypeError, match="expected a pyarrow.Table"):
        ua.append_arrow(p, [b"a"])
    # An offset pointing past the data (which pyarrow's cheap validation lets
    # through) is refused before any C loop reads it.
    bad = pa.Array.from_buffers(pa.binary(), 2, [None, pa.py_buffer(
        (0).to_bytes(4, "little") + (1 << 20).to_bytes(4, "little") + (3).to_bytes(4, "little")),
        pa.py_buffer(b"abc")])
    with pytest.raises(ValueError, match="value column 'value' is not valid Arrow data"):
        ua.append_arrow(p, pa.table({"value": bad}))
    # Nothing of the failed calls was written.
    assert p.end_offset == 0 and t.partition(1).end_offset == 0


def test_pyarrow_stays_optional(tmp_path):
    """Without pyarrow, unstoppable imports and works; the Arrow calls say what to install."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pyarrow"] = None          # as if it were not installed
        import unstoppable as us, unstoppable.arrow as ua
        with us.Log({str(tmp_path / "log")!r}) as log:
            t = log.create_topic("t")
            t.partition(0).append([b"x"], timestamp=1)
            for call in (lambda: t.to_arrow(), lambda: ua.append_arrow(t, None)):
                try:
                    call()
                except ImportError as e:
                    print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("pip install 'unstoppable[arrow]'") == 2


def test_reader_ingest_and_empty_tables(log):
    t = log.create_topic("t", partitions=2)
    p = t.partition(0)
    assert ua.append_arrow(p, pa.table({"value": pa.array([], pa.binary())})) == 0
    assert ua.append_arrow(t, pa.table({"value": pa.array([], pa.binary())})) == {}
    batches = [pa.record_batch({"value": [b"%d" % i for i in range(j, j + 10)]})
               for j in range(0, 50, 10)]
    reader = pa.RecordBatchReader.from_batches(batches[0].schema, batches)
    assert ua.append_arrow(p, reader) == 0
    assert p.append_arrow(pa.table({"value": [b"50"]})) == 50  # the Partition method
    assert [r[3] for r in _records(p)] == [b"%d" % i for i in range(51)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(
    st.none() | st.binary(max_size=20),
    st.none() | st.binary(max_size=300),
    st.lists(st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=10)), max_size=3),
    st.integers(0, 253402300799999)), max_size=60),  # up to MAX_TIMESTAMP (year 9999)
    st.integers(1, 3))
def test_round_trip_property(tmp_path_factory, rows, parts):
    with us.Log(tmp_path_factory.mktemp("log")) as log:
        t = log.create_topic("t", partitions=parts, max_batch_bytes=1024)
        table = pa.table({
            "key": pa.array([r[0] for r in rows], pa.binary()),
            "value": pa.array([r[1] for r in rows], pa.binary()),
            "headers": pa.array([r[2] for r in rows], HEADERS),
            "ts": pa.array([r[3] for r in rows], pa.int64()),
        })
        ua.append_arrow(t, table, timestamp="ts", headers="headers")
        out = ua.to_arrow(t)
        cols = (out.column("key").to_pylist(), out.column("value").to_pylist(),
                out.column("headers").to_pylist(), out.column("timestamp").cast(pa.int64()).to_pylist())
        got = sorted(((k, v, [(h["key"], h["value"]) for h in hs], ts)
                      for k, v, hs, ts in zip(*cols)), key=repr)
        assert got == sorted(rows, key=repr)
        for p in t:  # and every partition reads back the same record by record
            assert _rows(ua.to_arrow(p)) == _records(p)


# ---------------------------------------------------------------------------
# Decoded export


def _booking_class():
    """A protobuf message class built at runtime (no protoc): a booking event
    with scalars, an enum, proto3 optional, a nested message, a repeated
    field, a map and a oneof of event kinds."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="booking_test.proto", package="t",
                                             syntax="proto3")
    seat = fdp.message_type.add(name="Seat")
    seat.field.add(name="seat_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    seat.field.add(name="row", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    m = fdp.message_type.add(name="BookingEvent")
    kind = m.enum_type.add(name="Kind")
    for i, name in enumerate(["UNKNOWN", "RESERVED", "PAID", "CANCELLED"]):
        kind.value.add(name=name, number=i)
    entry = m.nested_type.add(name="CountersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    m.field.add(name="booking_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    m.field.add(name="kind", number=2, type=F.TYPE_ENUM, type_name=".t.BookingEvent.Kind",
                label=F.LABEL_OPTIONAL)
    m.field.add(name="user_id", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL,
                proto3_optional=True, oneof_index=1)
    m.field.add(name="amount", number=4, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    m.field.add(name="seat", number=5, type=F.TYPE_MESSAGE, type_name=".t.Seat",
                label=F.LABEL_OPTIONAL)
    m.field.add(name="tags", number=6, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    m.field.add(name="counters", number=7, type=F.TYPE_MESSAGE,
                type_name=".t.BookingEvent.CountersEntry", label=F.LABEL_REPEATED)
    m.field.add(name="reserved_seat", number=8, type=F.TYPE_MESSAGE, type_name=".t.Seat",
                label=F.LABEL_OPTIONAL, oneof_index=0)
    m.field.add(name="cancel_reason", number=9, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL,
                oneof_index=0)
    m.field.add(name="history", number=10, type=F.TYPE_MESSAGE, type_name=".t.Seat",
                label=F.LABEL_REPEATED)
    zone = m.nested_type.add(name="ZonesEntry")
    zone.options.map_entry = True
    zone.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    zone.field.add(name="value", number=2, type=F.TYPE_MESSAGE, type_name=".t.Seat",
                   label=F.LABEL_OPTIONAL)
    m.field.add(name="zones", number=11, type=F.TYPE_MESSAGE,
                type_name=".t.BookingEvent.ZonesEntry", label=F.LABEL_REPEATED)
    m.oneof_decl.add(name="event")
    m.oneof_decl.add(name="_user_id")  # synthetic oneofs come last
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.BookingEvent"))


def _booking_values(cls, n):
    out = []
    for i in range(n):
        if i % 17 == 5:
            out.append(None)  # a tombstone
            continue
        m = cls(booking_id=f"b{i}", kind=i % 4, amount=i * 1.5, tags=[f"t{j}" for j in range(i % 3)])
        if i % 2:
            m.user_id = f"u{i % 7}"
        if i % 3 == 0:
            m.seat.seat_id = f"s{i}"
            m.seat.row = i % 30
        if i % 5 == 1:
            m.reserved_seat.seat_id = f"r{i}"
        elif i % 5 == 2:
            m.cancel_reason = "late"
        for j in range(i % 4):
            m.counters[f"c{j}"] = i * j
            m.history.add(seat_id=f"h{j}", row=j)
            m.zones[f"z{j}"].seat_id = f"zs{i}"
        out.append(m.SerializeToString())
    return out


def _expected_booking(cls, v):
    """What one value should decode to, field by field from the parsed message."""
    names = ["booking_id", "kind", "user_id", "amount", "seat", "tags", "counters",
             "reserved_seat", "cancel_reason", "history", "zones", "event"]
    if v is None:
        return dict.fromkeys(names)
    m = cls.FromString(v)
    seat = lambda s: {"seat_id": s.seat_id, "row": s.row}  # noqa: E731
    return {
        "booking_id": m.booking_id,
        "kind": cls.Kind.Name(m.kind),
        "user_id": m.user_id if m.HasField("user_id") else None,
        "amount": m.amount,
        "seat": seat(m.seat) if m.HasField("seat") else None,
        "tags": list(m.tags),
        "counters": sorted(m.counters.items()),
        "reserved_seat": seat(m.reserved_seat) if m.HasField("reserved_seat") else None,
        "cancel_reason": m.cancel_reason if m.HasField("cancel_reason") else None,
        "history": [seat(s) for s in m.history],
        "zones": sorted((k, seat(s)) for k, s in m.zones.items()),
        "event": m.WhichOneof("event"),
    }


def test_protobuf_decoded_export_matches_per_record_decoding(log, tmp_path):
    cls = _booking_class()
    t = log.create_topic("bookings", partitions=2)
    values = _booking_values(cls, 300)
    ua.append_arrow(t, pa.table({"key": [b"%d" % (i % 11) for i in range(300)],
                                 "value": pa.array(values, pa.binary())}))
    table = ua.to_arrow(t, codec=cls, batch_bytes=2048)
    assert table.column_names[:5] == ["partition", "offset", "timestamp", "key", "headers"]
    assert table.schema.field("kind").type == pa.string()
    assert table.schema.field("seat").type == pa.struct([("seat_id", pa.string()), ("row", pa.int32())])
    assert table.schema.field("counters").type == pa.map_(pa.string(), pa.int64())
    assert table.num_rows == 300
    for p in t:
        want = [_expected_booking(cls, v) for _, _, _, v, _ in _records(p)]
        part = table.filter(pc.equal(table.column("partition"), p.index))
        got = part.drop_columns(["partition", "offset", "timestamp", "key", "headers"]).to_pylist()
        for g in got:
            for name in ("counters", "zones"):
                g[name] = None if g[name] is None else sorted(g[name])
        assert got == want
    # keep_value, a prefix, enum numbers; and Parquet with the decoded columns.
    kept = ua.to_arrow(t, codec=ua.ProtobufCodec(cls, prefix="v_", enums_as_names=False),
                       keep_value=True, partitions=[0])
    assert "value" in kept.column_names and kept.schema.field("v_kind").type == pa.int32()
    path = tmp_path / "bookings.parquet"
    assert ua.export_parquet(t, path, codec=cls) == 300
    assert pq.read_table(path).equals(table)


def test_json_and_callable_codecs(log):
    p = log.create_topic("t").partition(0)
    docs = [{"event": "reserved", "seat": i, "extra": 1} for i in range(20)]
    p.append([json.dumps(d).encode() for d in docs] + [None], timestamp=1)
    sch = pa.schema([("event", pa.string()), ("seat", pa.int64()), ("missing", pa.bool_())])
    table = ua.to_arrow(p, codec=ua.JsonCodec(sch))
    assert table.select(["event", "seat", "missing"]).to_pylist() == [
        {"event": d["event"], "seat": d["seat"], "missing": None} for d in docs] + [
        {"event": None, "seat": None, "missing": None}]

    def lengths(values):  # a vectorized codec over the whole value array
        return pa.RecordBatch.from_arrays([pc.binary_length(values)], names=["n"])
    assert ua.to_arrow(p, codec=lengths).column("n").to_pylist() == \
        [len(json.dumps(d)) for d in docs] + [None]
    with pytest.raises(ValueError, match=r"codec's column\(s\) \['offset'\] clash"):
        ua.to_arrow(p, codec=ua.JsonCodec(pa.schema([("offset", pa.int64())])))


def test_codec_failure_names_partition_and_offset(log):
    cls = _booking_class()
    p = log.create_topic("t", partitions=2).partition(1)
    p.append([cls(booking_id="a").SerializeToString(), b"\xff\xff\xff"], timestamp=1)
    with pytest.raises(ValueDecodeError, match="partition 1, offset 1") as e:
        ua.to_arrow(p, codec=cls)
    assert (e.value.partition, e.value.offset) == (1, 1)
    p0 = p = log.topic("t").partition(0)
    p0.append([b'{"a": 1}', b'{"a": 2}', b"{", b'{"a": 4}'], timestamp=1)
    with pytest.raises(ValueDecodeError, match="partition 0, offset 2: JSONDecodeError"):
        ua.to_arrow(p0, codec=ua.JsonCodec(pa.schema([("a", pa.int64())])))


# ---------------------------------------------------------------------------
# Parquet and bounded memory


def test_parquet_export(log, tmp_path):
    t = log.create_topic("t", partitions=3)
    table = _input_table()
    for i in range(3):
        ua.append_arrow(t.partition(i), table, timestamp="ts", headers="headers")
    path = tmp_path / "out.parquet"
    assert ua.export_parquet(t, path, batch_bytes=256, row_group_bytes=1, start=1) == 15
    back = pq.read_table(path)
    assert back.equals(ua.to_arrow(t, start=1))
    assert pq.ParquetFile(path).metadata.num_row_groups >= 3
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    # A failing export leaves no file behind.
    def failing(values):
        if len(values):
            raise RuntimeError("no")
        return pa.record_batch({"x": pa.array([], pa.int64())})
    with pytest.raises(ValueDecodeError, match="partition 0, offsets 0 .. 5: no"):
        ua.export_parquet(t, tmp_path / "bad.parquet", codec=failing)
    assert sorted(os.listdir(tmp_path)) == ["log", "out.parquet"]


_CHILD = textwrap.dedent("""
    import os, sys, pyarrow as pa, unstoppable as us
    from unstoppable import arrow as ua
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    log = us.Log(sys.argv[1])
    t = log.topic("big")
    mode, batch, end = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ua.to_arrow(t, end=1000)          # warm up imports and allocator
    before = hwm()
    rows = 0
    if mode == "batches":
        for b in t.to_batches(end=end, batch_bytes=batch):
            rows += b.num_rows
    else:
        rows = ua.export_parquet(t, sys.argv[5], end=end, row_group_bytes=batch,
                                 compression="none")
    print(rows, hwm() - before)
""")


@pytest.mark.parametrize("mode", ["batches", "parquet"])
def test_streaming_export_memory_is_bounded(tmp_path, mode):
    """Export a quarter of a topic, then all of it (48x the export batch: the
    Arrow batch, or the Parquet row group), each in a fresh child process. The
    growth of peak RSS (VmHWM, mapped segment pages included) must not follow
    the amount exported: the 72 MiB more of the full export may add at most
    16 MiB."""
    batch = 2 << 20
    n = 1_000_000  # ~100 MB of values
    with us.Log(tmp_path / "log") as log:
        t = log.create_topic("big")
        values = pa.array([b"%099d" % i for i in range(n // 10)] * 10, pa.binary())
        ua.append_arrow(t.partition(0), pa.table({"value": values}))
    growth = {}
    for end in (n // 4, n):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "log"), mode,
                              str(batch), str(end), str(tmp_path / "out.parquet")],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        rows, growth[end] = map(int, out.stdout.split())
        assert rows == end
    # The Parquet writer and the allocator take a fixed ~45 MiB here.
    assert growth[n] < 64 << 20, f"peak RSS grew by {growth[n] >> 20} MiB exporting 94 MiB"
    assert growth[n] - growth[n // 4] < 16 << 20, (
        f"peak RSS grew by {growth[n // 4] >> 20} MiB exporting a quarter of the topic, "
        f"by {growth[n] >> 20} MiB exporting all of it")
