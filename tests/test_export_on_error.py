"""``on_error`` of the decoded exports (issue 20: ``export --codec booking``
aborted on the demo's own poison record): raise, skip or null the rows whose
value does not decode; in the Python API and on the command line."""
from __future__ import annotations

import csv
import os
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from unstoppable import arrow as ua  # noqa: E402
from unstoppable.booking import events as ev  # noqa: E402
from unstoppable.booking.booking_pb2 import BookingEvent  # noqa: E402
from unstoppable.errors import ValueDecodeError  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli"))
from cliutil import cli  # noqa: E402

POISON = b"\xff\x00garbage"
#: partition -> its values in offset order: booking events, poison, a tombstone.
VALUES = {
    0: ["e0", POISON, "e2", "e3", POISON, POISON, "e6", None, "e8"],
    1: [POISON, "f1", "f2"],
}


def _value(v):
    if v is None or isinstance(v, bytes):
        return v
    return ev.reservation_requested("b-" + v, "u1", "seat-" + v, event_id=v).SerializeToString()


def _fill(log):
    t = log.create_topic("bookings", partitions=2)
    for p, vals in VALUES.items():
        t.partition(p).append([(b"k%d" % i, _value(v)) for i, v in enumerate(vals)])
    return t


def _poison_at():
    return [(p, o) for p, vals in VALUES.items() for o, v in enumerate(vals) if v is POISON]


def test_raise_names_the_first_bad_row(log):
    t = _fill(log)
    for kw in ({}, {"on_error": "raise"}):
        with pytest.raises(ValueDecodeError, match="partition 0, offset 1") as e:
            ua.to_arrow(t, codec=BookingEvent, **kw)
        assert (e.value.partition, e.value.offset) == (0, 1)
    with pytest.raises(ValueError, match="on_error must be one of"):
        ua.to_arrow(t, codec=BookingEvent, on_error="ignore")


@pytest.mark.parametrize("batch_bytes", [1 << 20, 64])
def test_skip_returns_exactly_the_good_rows_in_order(log, batch_bytes):
    t = _fill(log)
    plain = ua.to_arrow(t, codec=BookingEvent, on_error="null").schema
    bad: list = []
    table = ua.to_arrow(t, codec=BookingEvent, on_error="skip", bad_rows=bad,
                        batch_bytes=batch_bytes)
    assert table.schema == plain
    want = [(p, o, v) for p, vals in VALUES.items() for o, v in enumerate(vals) if v is not POISON]
    got = table.select(["partition", "offset", "event_id"]).to_pylist()
    assert [(r["partition"], r["offset"], r["event_id"]) for r in got] == want
    assert sorted(bad) == _poison_at()


def test_null_keeps_every_row_with_nulls_where_the_poison_was(log, tmp_path):
    t = _fill(log)
    bad: list = []
    table = ua.to_arrow(t, codec=BookingEvent, on_error="null", keep_value=True, bad_rows=bad)
    rows = table.to_pylist()
    assert [(r["partition"], r["offset"]) for r in rows] == \
        [(p, o) for p, vals in VALUES.items() for o in range(len(vals))]
    for r in rows:
        v = VALUES[r["partition"]][r["offset"]]
        assert r["value"] == _value(v)
        decoded = [r[f.name] for f in BookingEvent.DESCRIPTOR.fields]
        if v is None or v is POISON:
            assert decoded == [None] * len(decoded)
        else:
            assert r["event_id"] == v and r["seat_reservation_requested"]["seat_id"] == "seat-" + v
    assert sorted(bad) == _poison_at()
    # Parquet, through export_parquet: the same rows and the same schema.
    n = ua.export_parquet(t, tmp_path / "n.parquet", codec=BookingEvent, on_error="null",
                          keep_value=True)
    assert n == len(rows) and pq.read_table(tmp_path / "n.parquet").to_pylist() == rows
    n = ua.export_parquet(t, tmp_path / "s.parquet", codec=BookingEvent, on_error="skip")
    assert n == len(rows) - len(_poison_at())


def test_other_codecs_skip_and_null_too(log):
    t = log.create_topic("nums", partitions=1)
    vals = [b"1", b"x", b"3", b"y", b"z", b"6", b"7", b"q"]
    t.partition(0).append([(None, v) for v in vals])
    good = [int(v) for v in vals if v.isdigit()]
    # A RecordCodec (a JSON object per value) and a callable over the whole
    # array whose error names no row.
    rec = ua.RecordCodec(lambda v: {"n": int(v)}, pa.schema([("n", pa.int64())]))

    def whole(values):
        return pa.RecordBatch.from_pydict({"n": pa.array([int(v) for v in values.to_pylist()],
                                                         pa.int64())})

    for codec in (rec, whole):
        with pytest.raises(ValueDecodeError):
            ua.to_arrow(t, codec=codec)
        assert ua.to_arrow(t, codec=codec, on_error="skip").column("n").to_pylist() == good
        bad: list = []
        nulled = ua.to_arrow(t, codec=codec, on_error="null", bad_rows=bad)
        assert nulled.column("n").to_pylist() == [int(v) if v.isdigit() else None for v in vals]
        assert bad == [(0, o) for o, v in enumerate(vals) if not v.isdigit()]


def test_cli_export_booking_skip_csv(tmp_path):
    from unstoppable import Log
    logdir = tmp_path / "log"
    with Log(logdir) as log:
        _fill(log)
    out = tmp_path / "b.csv"
    r = cli("export", "bookings", "--codec", "booking", "--on-error", "skip", "--format", "csv",
            "--out", out, log=logdir)
    n_bad = len(_poison_at())
    n_good = sum(len(v) for v in VALUES.values()) - n_bad
    assert f"exported {n_good} records" in r.stdout
    assert r.stderr.strip() == f"skipped {n_bad} records whose value did not decode"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["partition"]), int(r["offset"]), r["event_id"]) for r in rows] == \
        [(p, o, v or "") for p, vals in VALUES.items() for o, v in enumerate(vals)
         if v is not POISON]
    # The default stops at the poison record, naming it, and writes nothing.
    r = cli("export", "bookings", "--codec", "booking", "--format", "csv", "--out",
            tmp_path / "x.csv", log=logdir, ok=False)
    assert r.returncode == 1 and "partition 0, offset 1" in r.stderr
    assert not (tmp_path / "x.csv").exists()
