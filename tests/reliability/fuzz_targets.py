"""Fuzz targets for the compiled core and the file loaders, driven by
hypothesis, run by test_fuzz.py in a child process (a segfault kills the child,
not pytest):

    python -X faulthandler=0 fuzz_targets.py TARGET EXAMPLES SEED LASTFILE

Before each input the child writes it to LASTFILE, so after a crash or a hang
the parent can show the input that did it. The rule for every target: a clean
error (CorruptLogError, or a documented ValueError for impossible arguments) or
a valid result, checked against a plain-Python reference where there is one.
On success it prints ``{"examples": n}`` as its last line.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
import tempfile

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import unstoppable as us
from unstoppable._core.batch import BatchEncoder, decode_batches
from unstoppable._core.hashing import crc32c
from unstoppable._core.segment import (
    Mapping,
    batch_at_or_after,
    find_batch,
    find_time,
    offset_index_entry,
    offset_index_floor,
    offset_index_valid,
    producer_batches,
    read_batches,
    read_records,
    scan,
    time_index_below,
    time_index_entry,
    time_index_valid,
)
from unstoppable.errors import CorruptLogError

COUNT = 0
LAST = None
WORK = tempfile.mkdtemp(prefix="us-fuzz-")


def _note(obj) -> None:
    """Record the input about to run (for a crash or hang report)."""
    global COUNT
    COUNT += 1
    with open(LAST, "wb") as f:
        pickle.dump(obj, f)


def _valid_batches(n: int = 3) -> bytes:
    e = BatchEncoder(max_batch_bytes=1024)
    recs = [(b"key%d" % i, b"value-%d" % i * (1 + i % 5), [("h%d" % i, b"x" * (i % 3))], 1000 + i)
            for i in range(4 * n)]
    e.encode(recs, 1000, producer_id=7, producer_epoch=1, base_sequence=0)
    e.set_base_offset(0)
    return bytes(e.view())


VALID = _valid_batches(6)


def _reseal(buf: bytearray) -> bytes:
    """Give every batch-shaped span a correct CRC, so mutations reach the record parser."""
    pos = 0
    while pos + 21 <= len(buf):     # RecordBatch v2: batchLength at 8, CRC of [21, end) at 17
        n = struct.unpack_from(">i", buf, pos + 8)[0] + 12
        if n < 61 or pos + n > len(buf):
            break
        struct.pack_into(">I", buf, pos + 17, crc32c(bytes(buf[pos + 21:pos + n])))
        pos += n
    return bytes(buf)


@st.composite
def batch_bytes(draw):
    """Arbitrary bytes, or valid batches damaged in structured ways."""
    kind = draw(st.sampled_from(["random", "flip", "overwrite", "cut", "splice", "resealed"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    buf = bytearray(VALID)
    if kind == "cut":
        return bytes(buf[:draw(st.integers(0, len(buf)))])
    if kind == "splice":
        a = draw(st.integers(0, len(buf)))
        b = draw(st.integers(0, len(buf)))
        return bytes(buf[:a] + buf[b:])
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        else:
            chunk = draw(st.binary(min_size=1, max_size=9))
            buf[i:i + len(chunk)] = chunk
    if kind == "resealed" or draw(st.booleans()):
        return _reseal(buf)
    return bytes(buf)


# ------------------------------------------------------------------ decode

def target_decode(data: bytes) -> None:
    _note(data)
    try:
        batches = decode_batches(data)
    except CorruptLogError:
        return
    pos = 0
    for b in batches:
        assert b.length >= 61 and b.record_count >= 1
        rs = [b[k] for k in range(len(b))]     # records() filters by offset; the base may be junk
        assert len(rs) == b.record_count
        for k, r in enumerate(rs):
            assert r.offset == b.base_offset + k
            for v in (r.key, r.value):
                if v is not None:
                    raw = bytes(v)
                    assert len(raw) == len(v) and raw in data   # a view of the input, in bounds
            r.headers
        pos += b.length
    assert pos == len(data)


# ----------------------------------------------------------------- segment

def _mapping(data: bytes, name: str):
    path = os.path.join(WORK, name)
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDWR)
    try:
        return Mapping(fd, max(len(data), 1)), fd
    except BaseException:
        os.close(fd)
        raise


@st.composite
def segment_case(draw):
    data = draw(batch_bytes())
    n = len(data)
    ints = st.integers(0, n + 8)
    return (data, draw(ints), draw(ints), draw(st.integers(-2, 40)), draw(st.integers(-1, 40)),
            draw(st.integers(0, 3000)), draw(st.booleans()))


def target_segment(case) -> None:
    _note(case)
    data, pos, end, offset, expected, ts, skip = case
    m, fd = _mapping(data, "seg")
    try:
        end = min(end, m.length)
        pos = min(pos, end)
        calls = [
            lambda: scan(m, pos, end, expected),
            lambda: find_batch(m, pos, end, offset, expected, skip),
            lambda: read_records(m, pos, end, offset, 50, 1 << 20, "t", 0),
            lambda: read_batches(m, pos, end, offset, 1 << 20, "t", 0),
            lambda: find_time(m, pos, end, ts),
            lambda: producer_batches(m, pos, end),
            lambda: batch_at_or_after(m, pos, end, end // 2),
        ]
        for call in calls:
            try:
                got = call()
            except CorruptLogError:
                continue
            if isinstance(got, tuple) and got and isinstance(got[0], list):
                for item in got[0]:
                    if hasattr(item, "records"):
                        item.records()
            if isinstance(got, int):
                assert got <= end or got == -1 or got >= 0
        r = scan(m, pos, end, expected)
        assert pos <= r.position <= end
        if r.position == end and r.code == 0 and pos < end:
            # Whole and CRC-valid: every record must parse.
            read_batches(m, pos, end, -1, 1 << 30, "t", 0)
    finally:
        os.close(fd)            # the mapping stays valid; it goes with its object


# ------------------------------------------------------------------- index

def _ref_oi_valid(data: bytes, n: int, limit: int) -> int:
    prev = None
    for i in range(n):
        rel, pos = struct.unpack_from("<II", data, 8 * i)
        if pos >= limit or (prev is not None and (rel <= prev[0] or pos <= prev[1])):
            return i
        prev = (rel, pos)
    return n


@st.composite
def index_case(draw):
    entries = draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5000), st.integers(-5, 5000)),
                            max_size=40))
    sort = draw(st.booleans())
    if sort:
        entries.sort()
    oi = b"".join(struct.pack("<II", r, p) for r, p, _ in entries)
    ti = b"".join(struct.pack("<qII", t, r, p) for r, p, t in entries)
    junk = draw(st.binary(max_size=20))
    return (oi + junk, ti + junk, draw(st.integers(0, 6000)), draw(st.integers(0, 70)),
            draw(st.integers(-10, 6000)), draw(st.integers(0, 45)))


def target_index(case) -> None:
    _note(case)
    oi, ti, limit, rel, ts, n_req = case
    mo, fo = _mapping(oi, "oi")
    mt, ft = _mapping(ti, "ti")
    try:
        n_oi = min(n_req, len(oi) // 8)
        n_ti = min(n_req, len(ti) // 16)
        k = offset_index_valid(mo, n_oi, limit)
        assert k == _ref_oi_valid(oi, n_oi, limit), (k, _ref_oi_valid(oi, n_oi, limit))
        kt = time_index_valid(mt, n_ti, limit)
        assert 0 <= kt <= n_ti
        for j in range(kt):                       # the valid prefix is ordered and below limit
            t_ts, t_rel, t_pos = time_index_entry(mt, j)
            assert t_pos < limit
            if j:
                p_ts, p_rel, p_pos = time_index_entry(mt, j - 1)
                assert t_ts >= p_ts and t_rel > p_rel and t_pos > p_pos
        if k:
            hit = offset_index_floor(mo, k, rel)
            entries = [offset_index_entry(mo, j) for j in range(k)]
            below = [e for e in entries if e[0] <= rel]
            assert hit == (below[-1] if below else None), (hit, below)
        if kt:
            hit = time_index_below(mt, kt, ts)
            entries = [time_index_entry(mt, j) for j in range(kt)]
            below = [e for e in entries if e[0] < ts]
            assert hit == (below[-1] if below else None), (hit, below)
        # Asking for more entries than the mapping holds is refused, never read.
        too_many = mo.length // 8 + 1
        for fn in (lambda: offset_index_valid(mo, too_many, limit),
                   lambda: offset_index_floor(mo, too_many, rel)):
            try:
                fn()
                raise AssertionError("read past the mapping")
            except ValueError:
                pass
    finally:
        os.close(fo)
        os.close(ft)


# --------------------------------------------------------------- partition

_TEMPLATE = None


def _partition_template():
    """A small log (sealed segments, indexes, a producer snapshot), left as a
    crashed writer leaves it; returns (root, partition dir, expected values).

    The same bytes in every run but for the head's boot id (this machine's)
    and active segment creation time (unused: no segment_ms), so a failing
    seed fails again: the background flusher, which
    would move the recovery checkpoint at its own pace after each roll, is
    kept out, and the checkpoint is moved once, by hand, mid-way."""
    global _TEMPLATE
    if _TEMPLATE is None:
        root = os.path.join(WORK, "template")
        log = us.Log(root)
        log._flusher.submit = lambda part: None
        p = log.create_topic("t", segment_bytes=4096, index_interval_bytes=128).partition(0)
        expected = []
        seq = 0
        for i in range(60):
            if i == 37:
                p.flush()  # the checkpoint: past some sealed segments, behind the rest
            vals = [b"val-%03d-%d" % (i, j) + b"~" * (i % 40) for j in range(1 + i % 4)]
            if i % 3:
                p.append(vals, timestamp=1000 + i)
            else:
                p.append(vals, timestamp=1000 + i, producer_id=5, producer_epoch=0, base_sequence=seq)
                seq += len(vals)
            expected += vals
        files = {n: open(os.path.join(p.path, n), "rb").read() for n in os.listdir(p.path)}
        log.close()
        _TEMPLATE = (root, os.path.relpath(p.path, root), files, expected)
    return _TEMPLATE


@st.composite
def partition_case(draw):
    root, rel, files, expected = _partition_template()
    names = sorted(n for n in files if n != "lock")
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(names))
        size = len(files[name])
        if name == "head":
            # The head's fields are trusted (a seqlock-written page); what can
            # happen to it is loss, a reboot, or damage that breaks its magic.
            op = draw(st.sampled_from(["reboot", "delete", "truncate", "garbage"]))
        else:
            op = draw(st.sampled_from(["flip", "zero", "truncate", "append", "overwrite", "delete"]))
        ops.append((name, op, draw(st.integers(0, max(size, 1))), draw(st.binary(min_size=1, max_size=64))))
    return ops


def target_partition(ops) -> None:
    """Damage a partition's files; opening must recover, and everything then
    readable must be exactly what was written at that offset."""
    _note(ops)
    root, rel, files, expected = _partition_template()
    dst = os.path.join(WORK, "case")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(root, dst)
    part = os.path.join(dst, rel)
    for name, data in files.items():          # as the writer left them before its clean close
        with open(os.path.join(part, name), "wb") as f:
            f.write(data)
    for name, op, at, blob in ops:
        path = os.path.join(part, name)
        if not os.path.exists(path):
            continue
        data = bytearray(open(path, "rb").read())
        at = min(at, len(data))
        if op == "delete":
            os.unlink(path)
            continue
        if op == "flip" and data:
            data[min(at, len(data) - 1)] ^= blob[0] | 1
        elif op == "zero":
            data[at:at + len(blob) * 16] = bytes(len(data[at:at + len(blob) * 16]))
        elif op == "truncate":
            del data[at:]
        elif op == "append":
            data += blob
        elif op == "overwrite":
            data[at:at + len(blob)] = blob
        elif op == "reboot" and len(data) >= 88:
            data[72:88] = b"\xee" * 16
        elif op == "garbage":
            data[0:len(blob)] = blob
            data[0] ^= 0x80                       # never the magic again
        with open(path, "wb") as f:
            f.write(data)
    with us.Log(dst) as log:
        p = log.topic("t").partition(0)
        start, end = p.start_offset, p.end_offset
        assert 0 <= start <= end <= len(expected) + 1000
        off = start
        while off < end:
            try:
                rs = p.read(off, max_records=500)
            except (CorruptLogError, us.OffsetOutOfRangeError):
                off += 1                          # reported (a deleted segment is out of range)
                continue
            assert rs
            for k, r in enumerate(rs):
                assert r.offset == off + k
                if r.offset < len(expected):
                    assert bytes(r.value) == expected[r.offset], (r.offset, bytes(r.value))
            off += len(rs)
        log.verify()
        for ts in (0, 1030):
            try:
                p.offset_for_time(ts)
            except CorruptLogError:
                pass
        try:
            p.producer_state(5)
        except CorruptLogError:
            pass
        n = p.end_offset
        assert p.append([b"after"]) == n
        assert bytes(p.read(n)[0].value) == b"after"


# --------------------------------------------------------------- snapshots

def target_snapshot(data: bytes) -> None:
    from unstoppable.storage.producer_state import ProducerStateTable
    _note(data)
    path = os.path.join(WORK, "00000000000000000000.producers")
    with open(path, "wb") as f:
        f.write(data)
    t = ProducerStateTable()
    try:
        t._read_snapshot(path)
    except CorruptLogError:
        return
    for pid, p in t.producers.items():
        assert len(p.batches) <= 5
        p.next_sequence()


@st.composite
def snapshot_bytes(draw):
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        return struct.pack("<4sIII", b"USPS", 1, draw(st.integers(0, 2 ** 32 - 1)), crc32c(body)) + body
    return draw(st.binary(max_size=220))


def target_offsets(data: bytes) -> None:
    from unstoppable.storage.groups import MAGIC, OffsetsFile
    _note(data)
    root = os.path.join(WORK, "offlog")
    gdir = os.path.join(root, "groups", "g")
    os.makedirs(gdir, exist_ok=True)
    with open(os.path.join(gdir, "offsets"), "wb") as f:
        f.write(data)
    f = OffsetsFile(root, "g")
    try:
        try:
            got = f.load()
        except CorruptLogError:
            assert not data.startswith(MAGIC)
            return
        assert all(isinstance(k[0], str) and isinstance(v, int) for k, v in got.items())
        f.commit({("t", 0): 5}, sync=False)
        again = OffsetsFile(root, "g")
        assert again.load()[("t", 0)] == 5
        again.close()
    finally:
        f.close()


@st.composite
def offsets_bytes(draw):
    from unstoppable.storage.groups import MAGIC, _encode_record
    # every other record carries commit metadata (the optional part after the entries)
    recs = b"".join(_encode_record({("t%d" % i, i): i * 7}, 1, {("t%d" % i, i): "m%d" % i} if i % 2 else None)
                    for i in range(draw(st.integers(0, 4))))
    buf = bytearray(MAGIC + recs)
    for _ in range(draw(st.integers(0, 3))):
        if buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):
        buf = buf[:draw(st.integers(0, len(buf)))]
    return bytes(buf + draw(st.binary(max_size=30)))


TARGETS = {
    "decode": (target_decode, batch_bytes()),
    "segment": (target_segment, segment_case()),
    "index": (target_index, index_case()),
    "partition": (target_partition, partition_case()),
    "snapshot": (target_snapshot, snapshot_bytes()),
    "offsets": (target_offsets, offsets_bytes()),
}


def main(argv) -> int:
    global LAST
    name, examples, sd, LAST = argv[1], int(argv[2]), int(argv[3]), argv[4]
    fn, strategy = TARGETS[name]

    @seed(sd)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategy)
    def run(x):
        fn(x)

    try:
        run()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print(json.dumps({"examples": COUNT}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
