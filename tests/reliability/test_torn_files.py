"""Torn and corrupt files beyond tests/storage/test_recovery.py: every byte
position of the last batch crossed with several kinds of damage to the tail,
to the active segment's index files and to the head (same boot or after a
reboot); and damage inside sealed segments, which must be reported with its
place by reads and by verify(), never returned as data."""
from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

import pytest

import unstoppable as us
from unstoppable.errors import CorruptLogError

HEAD_BOOT_ID = 72          # docs/FORMAT.md §8.1
# Kafka RecordBatch v2 header (docs/FORMAT.md §4.1): baseOffset, batchLength,
# partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta, baseTimestamp,
# maxTimestamp, producerId, producerEpoch, baseSequence, records count.
BATCH = struct.Struct(">qiibIhiqqqhii")
HEADER = BATCH.size   # 61


def _values(i: int, n: int) -> list:
    return [b"rec-%04d-%d-" % (i, j) + bytes([65 + (i + j) % 26]) * (7 + (i * 13 + j) % 50)
            for j in range(n)]


class Template:
    """A one-partition log left open (no clean close, like a live or crashed
    writer), with sealed segments, index entries in the active segment, and a
    last append whose batch is the one that gets torn."""

    def __init__(self, root, last_batches: int = 1):
        self.root = str(root)
        log = us.Log(root)
        p = log.create_topic("t", segment_bytes=4096, index_interval_bytes=96,
                             max_batch_bytes=1024).partition(0)
        self.rel = os.path.relpath(p.path, self.root)
        self.expected = []
        i = 0
        # Fill a few segments, then enough of the active one for index entries.
        while len([f for f in os.listdir(p.path) if f.endswith(".log")]) < 3 or \
                p._head.read().oi_count < 3:
            vals = _values(i, 1 + i % 3)
            p.append(vals, timestamp=1000 + i)
            self.expected += vals
            i += 1
        st = p._head.read()
        self.active = os.path.join(p.path, f"{st.active_base:020d}")
        self.head_before = self._read("head")
        self.files_before = {ext: os.path.getsize(self.active + ext)
                             for ext in (".log", ".index", ".timeindex")}
        self.pos_before = self.files_before[".log"]
        self.n_before = len(self.expected)
        # The last append: one batch, or several when last_batches > 1.
        per = 3 if last_batches == 1 else 24
        big = [v + b"#" * (40 if last_batches > 1 else 0) for v in _values(i, per)]
        p.append(big, timestamp=1000 + i)
        self.expected += big
        self.n_all = len(self.expected)
        self.head_after = self._read("head")
        self.files = {name: self._read(name) for name in os.listdir(p.path)}
        self.full = len(self.files[os.path.basename(self.active) + ".log"])
        self.batch_ends = []
        pos = self.pos_before
        data = self.files[os.path.basename(self.active) + ".log"]
        n = self.n_before
        while pos < self.full:
            h = BATCH.unpack_from(data, pos)
            pos += h[1] + 12
            n += h[12]
            self.batch_ends.append((pos, n))
        assert (len(self.batch_ends) > 1) == (last_batches > 1), self.batch_ends
        assert p._head.read().active_base == st.active_base   # no roll in the last append
        self.log = log   # kept open until the template is dropped

    def _read(self, name):
        with open(os.path.join(self.root, self.rel, name), "rb") as f:
            return f.read()

    def close(self):
        self.log.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    t = Template(tmp_path_factory.mktemp("torn") / "template")
    yield t
    t.close()


@pytest.fixture(scope="module")
def template_multi(tmp_path_factory):
    t = Template(tmp_path_factory.mktemp("torn_multi") / "template", last_batches=3)
    yield t
    t.close()


def _with_boot(head: bytes, boot: bytes) -> bytes:
    return head[:HEAD_BOOT_ID] + boot + head[HEAD_BOOT_ID + 16:]


OTHER_BOOT = b"\xee" * 16
DAMAGE = ["truncate", "zero", "garbage", "stale_batch"]
INDEX_DAMAGE = ["none", "partial_entry", "garbage", "missing"]
HEADS = ["old", "old_reboot", "new_reboot", "new_same_boot"]


def _apply(t: Template, dst: str, cut: int, damage: str, index_damage: str, head: str,
           rnd: random.Random) -> bytes:
    """Write the damaged partition into ``dst``; returns the damaged active segment."""
    part = os.path.join(dst, t.rel)
    if not os.path.exists(dst):
        shutil.copytree(t.root, dst)
    for name in os.listdir(part):           # restore the partition from the template
        os.unlink(os.path.join(part, name))
    for name, data in t.files.items():
        with open(os.path.join(part, name), "wb") as f:
            f.write(data)
    stem = os.path.basename(t.active)
    seg = t.files[stem + ".log"]
    data = seg[:cut]
    if damage == "zero":
        # The pages from the cut on came back as zeros (a torn page write).
        end = -(-t.full // 4096) * 4096 + 4096
        data += b"\0" * (end - cut)
    elif damage == "garbage":
        data += rnd.randbytes(rnd.randrange(1, 3000))
    elif damage == "stale_batch":
        # An old, CRC-valid batch from earlier in the segment: stale bytes.
        first_len = struct.unpack_from(">i", seg, 8)[0] + 12
        data += seg[:first_len]
    with open(os.path.join(part, stem + ".log"), "wb") as f:
        f.write(data)
    for ext, esz in ((".index", 8), (".timeindex", 16)):
        path = os.path.join(part, stem + ext)
        full_idx = t.files[stem + ext]
        before = full_idx[:t.files_before[ext]]
        if index_damage == "none":
            idx = full_idx                                  # entries of the torn batch included
        elif index_damage == "partial_entry":
            extra = full_idx[len(before):] or rnd.randbytes(esz)
            idx = before + extra[:rnd.randrange(1, esz)]
        elif index_damage == "garbage":
            # Past the entries the head counts (same boot, the new head counts
            # the last append's entries, and the page cache kept them).
            idx = (full_idx if head == "new_same_boot" else before) + \
                rnd.randbytes(rnd.randrange(1, 5 * esz))
        else:
            os.unlink(path)
            continue
        with open(path, "wb") as f:
            f.write(idx)
    hb = {"old": t.head_before, "old_reboot": _with_boot(t.head_before, OTHER_BOOT),
          "new_reboot": _with_boot(t.head_after, OTHER_BOOT), "new_same_boot": t.head_after}[head]
    with open(os.path.join(part, "head"), "wb") as f:
        f.write(hb)
    return data


def _read_values(p) -> list:
    out = []
    off = p.start_offset
    while off < p.end_offset:
        rs = p.read(off, max_records=1000)
        assert [r.offset for r in rs] == list(range(off, off + len(rs)))
        out += [bytes(r.value) for r in rs]
        off += len(rs)
    return out


def _check(t: Template, dst: str, allowed: set, figures) -> int:
    """Reopen: a valid prefix whose length is in ``allowed``; appends work; a
    second open finds nothing more to do and the same records."""
    with us.Log(dst) as log:
        p = log.topic("t").partition(0)
        figures.max("longest_recovery_seconds", p.recovery.seconds)
        n = p.end_offset
        assert n in allowed, (n, allowed, p.recovery)
        assert _read_values(p) == t.expected[:n]
        assert p.append([b"after"]) == n
        rep = log.verify()
        assert rep.ok, rep.problems
        assert p.offset_for_time(0) == 0
    with us.Log(dst) as log:
        p = log.topic("t").partition(0)
        assert p.recovery.truncated_bytes == 0 and p.recovery.deleted_segments == 0, p.recovery
        assert _read_values(p) == t.expected[:n] + [b"after"]
    figures.add("torn_tail_cases")
    return n


def _allowed(t: Template, head: str, data: bytes) -> set:
    if head == "old":
        return {t.n_before}          # same boot: the head is right, the tail is cut
    # After a reboot (or an outside truncation) the longest valid prefix: the
    # batches of the last append whose bytes are all still there are kept.
    seg = t.files[os.path.basename(t.active) + ".log"]
    whole = [n for end, n in t.batch_ends if data[t.pos_before:end] == seg[t.pos_before:end]]
    return {max([t.n_before] + whole)}


def _head_for(head: str, damage: str) -> str:
    """Same boot with the new head means the page cache held the whole append;
    only an outside truncation can tear it then. (Bytes changed below the head
    in the same boot are corruption of acknowledged data, reported by reads:
    the sealed-segment tests below.)"""
    if head == "new_same_boot" and damage != "truncate":
        return "new_reboot"
    return head


def _cases(t: Template, rnd: random.Random):
    """Every position of the last append x every kind of tail damage, with the
    index and head damage rotating; plus every combination at the header edges."""
    for cut in range(t.pos_before, t.full + 1):
        for k, damage in enumerate(DAMAGE):
            j = cut + k
            yield cut, damage, INDEX_DAMAGE[j % 4], HEADS[(j // 4) % 4]
    edges = {t.pos_before, t.pos_before + 1, t.pos_before + 8, t.pos_before + 12,
             t.pos_before + 16, t.pos_before + 17, t.pos_before + 21,
             t.pos_before + HEADER, t.full - 1, t.full}
    for cut in sorted(edges):
        for damage in DAMAGE:
            for idx in INDEX_DAMAGE:
                for head in HEADS:
                    yield cut, damage, idx, head


def test_every_tail_position_with_every_damage(template, tmp_path, figures):
    t = template
    rnd = random.Random(5)
    dst = str(tmp_path / "case")
    n = 0
    for cut, damage, idx, head in _cases(t, rnd):
        head = _head_for(head, damage)
        data = _apply(t, dst, cut, damage, idx, head, rnd)
        try:
            _check(t, dst, _allowed(t, head, data), figures)
        except BaseException as e:
            raise AssertionError(f"cut={cut} (last batch at {t.pos_before}..{t.full}) "
                                 f"damage={damage} index={idx} head={head}: {e!r}") from e
        n += 1
    assert n > 4 * (t.full - t.pos_before)


def test_torn_multi_batch_append(template_multi, tmp_path, figures):
    """The last append spans three batches. Same boot: all of it is cut (it
    was never acknowledged). After a reboot the longest valid prefix stays,
    which may end inside that append, at a batch boundary."""
    t = template_multi
    rnd = random.Random(6)
    dst = str(tmp_path / "case")
    cuts = {t.pos_before, t.full} | {rnd.randrange(t.pos_before, t.full) for _ in range(8)}
    for end, _ in t.batch_ends:
        cuts |= {end - 1, end, end + 1, end + 8, end + 17, end + HEADER}
    for cut in sorted(c for c in cuts if t.pos_before <= c <= t.full):
        for damage in ("truncate", "garbage", "zero"):
            for head in HEADS:
                head = _head_for(head, damage)
                data = _apply(t, dst, cut, damage, "none", head, rnd)
                try:
                    _check(t, dst, _allowed(t, head, data), figures)
                except BaseException as e:
                    raise AssertionError(f"cut={cut} damage={damage} head={head}: {e!r}") from e


# ------------------------------------------------------------- sealed data

def _sealed_template(root):
    log = us.Log(root)
    p = log.create_topic("t", segment_bytes=4096, index_interval_bytes=200).partition(0)
    expected = []
    for i in range(150):
        vals = _values(i, 1 + i % 4)
        p.append(vals, timestamp=1000 + i)
        expected += vals
    log.close()
    segs = sorted(f for f in os.listdir(p.path) if f.endswith(".log"))
    return os.path.relpath(p.path, root), segs, expected


def _batches(data: bytes):
    pos, out = 0, []
    while pos + HEADER <= len(data):
        h = BATCH.unpack_from(data, pos)
        base, length, cnt = h[0], h[1] + 12, h[12]
        out.append((pos, length, base, cnt))
        pos += length
    return out


def _read_everything(p, expected, victim):
    """Read every offset one at a time and in runs: good records must be
    exactly the expected ones; bad ones must raise CorruptLogError naming the
    victim segment. Returns the set of offsets that raised."""
    bad = set()
    for off in range(p.start_offset, p.end_offset):
        try:
            rs = p.read(off, max_records=7)
        except CorruptLogError as e:
            assert (e.topic, e.partition, e.segment) == ("t", 0, victim), e
            assert e.position is not None and e.offset is not None, e
            bad.add(off)
            continue
        assert rs, off
        assert [r.offset for r in rs] == list(range(off, off + len(rs))), (off, [r.offset for r in rs])
        assert [bytes(r.value) for r in rs] == expected[off:off + len(rs)], off
    for off in range(p.start_offset, p.end_offset, 50):
        try:
            for b in p.read_batches(off, max_bytes=2000):
                rs = b.records(off)
                assert [bytes(r.value) for r in rs] == expected[rs[0].offset:rs[0].offset + len(rs)]
                assert [r.offset for r in rs] == list(range(rs[0].offset, rs[0].offset + len(rs)))
        except CorruptLogError as e:
            assert e.segment == victim, e
    return bad


@pytest.mark.parametrize("damage", ["flip", "zero_run", "base_offset", "length_field",
                                    "truncated", "garbage_appended", "index_lies"])
def test_sealed_segment_damage_is_reported_never_returned(tmp_path, figures, damage):
    src = tmp_path / "src"
    rel, segs, expected = _sealed_template(src)
    victim_name = segs[1]
    data = Path(os.path.join(src, rel, victim_name)).read_bytes()
    batches = _batches(data)
    rnd = random.Random(damage)
    # Positions to damage: every byte of two batches for flips, a sample otherwise.
    if damage == "flip":
        spots = list(range(batches[2][0] + 8, batches[2][0] + batches[2][1]))
    elif damage in ("base_offset",):
        spots = [b[0] + k for b in batches[1:-1] for k in range(0, 8, 3)]
    else:
        spots = [rnd.randrange(len(data)) for _ in range(12)]
    for spot in spots:
        dst = tmp_path / "case"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        part = os.path.join(dst, rel)
        victim = os.path.join(part, victim_name)
        buf = bytearray(data)
        if damage == "flip":
            buf[spot] ^= 1 << rnd.randrange(8)
        elif damage == "zero_run":
            n = rnd.randrange(1, 600)
            buf[spot:spot + n] = bytes(len(buf[spot:spot + n]))
        elif damage == "base_offset":
            buf[spot] ^= 1 << rnd.randrange(8)
        elif damage == "length_field":
            b = min(batches, key=lambda x: abs(x[0] - spot))
            struct.pack_into(">I", buf, b[0] + 8, rnd.choice([0, 1, 48, 49, b[1] - 13, b[1] - 11,
                                                              0x7FFFFFFF, 0xFFFFFFFF]))
        elif damage == "truncated":
            del buf[spot:]
        elif damage == "garbage_appended":
            buf += rnd.randbytes(rnd.randrange(1, 200))
        if damage == "index_lies":
            # Index entries that point at the wrong places (inside batches, at
            # the wrong batch), with the data intact.
            idx = os.path.join(part, victim_name[:-4] + ".index")
            ib = bytearray(Path(idx).read_bytes())
            assert len(ib) >= 16
            k = rnd.randrange(len(ib) // 8)
            irel, ipos = struct.unpack_from("<II", ib, 8 * k)
            if spot % 2:
                ipos = (ipos + rnd.choice([-1, 1, 61, -61, 7])) % (1 << 32)   # inside a batch
            else:
                irel = (irel + rnd.choice([-1, 1, 3])) % (1 << 32)            # the wrong batch
            struct.pack_into("<II", ib, 8 * k, irel, ipos)
            with open(idx, "wb") as f:
                f.write(ib)
        else:
            with open(victim, "wb") as f:
                f.write(buf)
        changed = bytes(buf) != data
        before = {n: Path(os.path.join(part, n)).read_bytes() for n in os.listdir(part)
                  if n.endswith(".log")}
        with us.Log(dst) as log:
            p = log.topic("t").partition(0)
            assert p.end_offset == len(expected)          # sealed data is never cut
            bad = _read_everything(p, expected, victim)
            rep = log.verify()
            if damage == "index_lies":
                assert not bad                            # the data is fine: reads fall back
            elif changed:
                assert not rep.ok, f"{damage} at {spot} not found by verify()"
                assert all(x.segment in (victim, victim[:-4] + ".index", victim[:-4] + ".timeindex")
                           for x in rep.problems), rep.problems
                assert any(x.segment == victim and x.position is not None for x in rep.problems)
                if damage != "garbage_appended":
                    assert bad, f"{damage} at {spot}: every read succeeded"
            for ts in (0, 1000 + 75, 1 << 40):
                try:                                      # reported with its place, or found
                    got = p.offset_for_time(ts)
                    assert got is None or 0 <= got < len(expected)
                except CorruptLogError as e:
                    assert e.segment == victim, e
        after = {n: Path(os.path.join(part, n)).read_bytes() for n in os.listdir(part)
                 if n.endswith(".log")}
        assert after == before                            # reads and verify changed no data
        figures.add("sealed_corruption_cases")
