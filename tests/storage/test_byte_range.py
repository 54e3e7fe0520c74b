"""Partition.byte_range (whole batches as they lie in a segment file, what the
Kafka server hands to sendfile) and append_encoded(producer=...) (a client's
idempotent batch, checked against the producer state)."""
from __future__ import annotations

import os
import struct

import pytest

import unstoppable as us
from unstoppable._core.batch import BatchEncoder
from unstoppable.errors import (
    CorruptLogError,
    DuplicateSequenceError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
)

import format_reference as fr


@pytest.fixture
def log(tmp_path):
    with us.Log(tmp_path / "log") as lg:
        yield lg


def _file_bytes(rng) -> bytes:
    with open(rng.segment.path, "rb") as f:
        f.seek(rng.position)
        return f.read(rng.length)


def _batches(data: bytes):
    """(baseOffset, record count) of each RecordBatch v2 in ``data``, by the reference decoder."""
    out, pos = [], 0
    while pos < len(data):
        (blen,) = struct.unpack_from(">i", data, pos + 8)
        b = fr.decode_batch(data[pos:pos + 12 + blen])
        out.append((b.base_offset, b.record_count))
        pos += 12 + blen
    return out


def test_byte_range_is_whole_batches_within_max_bytes(log):
    p = log.create_topic("t", index_interval_bytes=100).partition(0)
    for i in range(10):
        p.append([b"%d-%d" % (i, j) for j in range(3)])       # 10 batches of 3 records
    one = p.byte_range(0, 1).length                              # always one whole batch
    r = p.byte_range(4, 3 * one)                                 # offset 4 lies in batch 1
    assert (r.magic, r.base_offset) == (2, 3)
    got = _batches(_file_bytes(r))
    assert got == [(3, 3), (6, 3), (9, 3)] and r.length <= 3 * one
    assert _batches(_file_bytes(p.byte_range(4, 3 * one - 1))) == [(3, 3), (6, 3)]
    assert _batches(_file_bytes(p.byte_range(29, 1 << 20))) == [(27, 3)]
    # The file's bytes are the log's: the reference decoder reads the records.
    assert p.byte_range(30, 10) is None
    with pytest.raises(OffsetOutOfRangeError):
        p.byte_range(31, 10)
    # The segment's descriptor and mapping serve the same bytes.
    r = p.byte_range(0, 1 << 20)
    assert bytes(r.segment.data(r.position + r.length).view[r.position:r.position + r.length]) \
        == _file_bytes(r) and os.pread(r.segment.fd, r.length, r.position) == _file_bytes(r)


def test_byte_range_stays_in_one_segment(log):
    p = log.create_topic("s", segment_bytes=4096, max_batch_bytes=1024).partition(0)
    for i in range(40):
        p.append([os.urandom(200)])
    r = p.byte_range(0, 1 << 20)
    assert r.position == 0 and r.length <= 4096
    last_base, last_n = _batches(_file_bytes(r))[-1]
    r2 = p.byte_range(last_base + last_n, 1 << 20)
    assert r2.position == 0 and r2.base_offset == last_base + last_n


def test_byte_range_refuses_a_damaged_first_batch(log, tmp_path):
    p = log.create_topic("d").partition(0)
    p.append([b"a", b"b"])
    p.append([b"c"])
    r = p.byte_range(0, 1 << 20)
    first_len = struct.unpack_from(">i", _file_bytes(r), 8)[0] + 12
    with open(r.segment.path, "r+b") as f:                       # a bit flip in batch 2's records
        f.seek(r.length - 1)
        b = f.read(1)
        f.seek(r.length - 1)
        f.write(bytes([b[0] ^ 1]))
    assert p.byte_range(0, 1 << 20).length == first_len          # served up to the damage
    with pytest.raises(CorruptLogError):
        p.byte_range(2, 1 << 20)


def test_byte_range_of_format_1_batches_stops_at_format_2(tmp_path):
    """A log written before format 2 (docs/FORMAT.md 4.8): the range names
    its format, and never mixes the two."""
    d = tmp_path / "old"
    with us.Log(d) as lg:
        lg.create_topic("old").partition(0)
    pdir = d / "topics" / "old" / "0"
    v1 = fr.encode_batch_v1(0, [(1000, b"k", b"v", []), (1001, None, b"w", [])]) + \
        fr.encode_batch_v1(2, [(1002, None, b"x", [])])
    (pdir / fr.segment_name(0)).with_suffix(".log").write_bytes(v1)
    os.unlink(pdir / "head")                                     # recovery rebuilds it from the file
    with us.Log(d) as lg:
        p = lg.topic("old").partition(0)
        p.append([b"new"])
        r = p.byte_range(1, 1 << 20)
        assert (r.magic, r.position, r.length, r.base_offset) == (1, 0, len(v1), 0)
        r = p.byte_range(3, 1 << 20)
        assert (r.magic, r.position, r.base_offset) == (2, len(v1), 3)
        assert _batches(_file_bytes(r)) == [(3, 1)]


def _client_batch(values, pid, epoch, seq) -> bytes:
    return fr.encode_batch(0, [(1000 + i, None, v, []) for i, v in enumerate(values)],
                           producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def test_append_encoded_checks_idempotent_sequences(log):
    p = log.create_topic("i").partition(0)
    enc = BatchEncoder()

    def put(values, seq, epoch=0):
        enc.clear()
        enc.add_batches(_client_batch(values, 77, epoch, seq))
        return p.append_encoded(enc, producer=(77, epoch, seq))
    assert put([b"a", b"b"], 0) == (0, 2)
    assert put([b"a", b"b"], 0) == (0, 2)                        # a retry: the original offsets
    with pytest.raises(OutOfOrderSequenceError):
        put([b"c"], 5)
    assert put([b"c"], 2) == (2, 3)
    for s in range(3, 9):
        put([b"n"], s)
    with pytest.raises(DuplicateSequenceError):
        put([b"old"], 3)
    assert p.end_offset == 9 and p.producer_state(77) == (0, 9)
    # The client's batch is stored byte for byte after its baseOffset.
    sent = _client_batch([b"z"], 77, 0, 9)
    enc.clear()
    enc.add_batches(sent)
    assert p.append_encoded(enc, producer=(77, 0, 9)) == (9, 10)
    assert _file_bytes(p.byte_range(9, 1 << 20))[8:] == sent[8:]
    enc.clear()
    enc.add_batches(_client_batch([b"x"], 77, 0, 10) + _client_batch([b"y"], 77, 0, 11))
    with pytest.raises(ValueError, match="one batch"):
        p.append_encoded(enc, producer=(77, 0, 10))
