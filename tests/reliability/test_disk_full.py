"""Disk full, beyond tests/storage/test_diskfull.py: EFBIG (RLIMIT_FSIZE) around
rolls, through the asyncio producer with fsync acks, and in group-offset
commits; and a real small file system (a tmpfs, or ext4 on a loop device, when
running as root where mount works), where index writes, producer snapshots at
a roll, partition heads and the compaction of offsets files meet ENOSPC.

Each time: a DiskFullError (an OSError with ENOSPC or EFBIG), what was
acknowledged stays readable and unchanged, nothing of the refused operation is
visible, and the log works again once there is room."""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import textwrap

import pytest

import unstoppable as us
from unstoppable._core.segment import sigbus_absorbed
from unstoppable.errors import DiskFullError
from unstoppable.storage.groups import OffsetsFile

from .util import check_log, read_acks, read_partition, run_child

ENOSPC, EFBIG = 28, 27


# ------------------------------------------------------------ RLIMIT_FSIZE

ROLL_CHILD = textwrap.dedent("""
    import json, resource, sys
    import unstoppable as us
    from unstoppable.errors import DiskFullError
    log = us.Log(sys.argv[1])
    p = log.create_topic("t", segment_bytes=64 * 1024, index_interval_bytes=512).partition(0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    acked, errors = [], []
    i = 0
    # Small appends until the segment file reaches the limit, then appends that
    # roll first (the roll succeeds: new files are empty) and fail in the new
    # segment, then small ones that fit the new segment.
    for size in [300] * 200 + [30_000] * 3 + [50_000] * 3 + [300] * 20:
        v = b"%06d:" % i + b"z" * size
        try:
            acked.append((p.append([v]), len(v), i))
        except DiskFullError as e:
            errors.append([e.errno, str(e), p.end_offset, p._head.read().active_base])
        i += 1
    assert log.verify().ok
    print(json.dumps({"acked": acked, "errors": errors, "end": p.end_offset}))
    log.close()
""")


def test_efbig_before_and_after_a_roll(tmp_path, figures):
    d = tmp_path / "l"
    out = run_child(ROLL_CHILD, d)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    errs = res["errors"]
    assert errs and all(e[0] == EFBIG and "no space" in e[1] for e in errs), errs
    # Some failed in the first segment, some right after a roll into a new one.
    assert len({e[3] for e in errs}) >= 2, errs
    acked = res["acked"]
    assert acked[-1][2] == 225                      # appends worked again after the failures
    with us.Log(d) as log:
        p = log.topic("t").partition(0)
        assert p.recovery.truncated_bytes == 0
        assert p.end_offset == len(acked) == res["end"]
        for off, (base, n, i) in enumerate(acked):
            r = p.read(base, max_records=1)[0]
            assert (r.offset, len(r.value), bytes(r.value[:7])) == (off, n, b"%06d:" % i)
        assert log.verify().ok
        assert p.append([b"x" * 100_000]) == len(acked)   # no limit: room again
    figures.add("disk_full_cases", len(errs))


PRODUCER_CHILD = textwrap.dedent("""
    import asyncio, os, resource, sys, hashlib
    import unstoppable as us
    sys.path.insert(0, sys.argv[3])
    from workers import digest
    log = us.Log(sys.argv[1])
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    limit = int(sys.argv[4])
    kinds = {}

    async def main():
        async with us.Producer(log, "t", acks="fsync", producer_id="p0", linger_ms=2,
                               delivery_timeout_ms=300, retry_backoff_ms=20) as p:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            futs = []
            failed_at = None
            for i in range(3000):
                key = b"key%d" % (i % 7)
                v = b"p0|0|%d|%s|" % (i, key) + b"." * 200
                futs.append((await p.send(v, key=key), v, i))
                if i % 50 == 49:
                    await p.flush()
                    if failed_at is None and any(f.exception() for f, _, _ in futs[-50:]):
                        failed_at = i
                    if failed_at is not None and i >= failed_at + 100:
                        break
            await p.flush()
            for f, v, i in futs:
                e = f.exception()
                if e is None:
                    md = f.result()
                    os.write(fd, b"%d %d %s p0 0 %d\\n" % (md.partition, md.offset, digest(v).encode(), i))
                else:
                    k = (type(e).__name__, type(e.__cause__).__name__, getattr(e.__cause__, "errno", None))
                    kinds[k] = kinds.get(k, 0) + 1

    asyncio.run(main())
    print(kinds)
    log.close()
""")


def test_fsync_acks_through_the_producer_under_efbig(tmp_path, figures):
    """Sends fail with DeliveryTimeoutError caused by DiskFullError once the
    partitions' files reach the limit; every acknowledged record is in the
    log, once; a restarted producer with the same id continues cleanly."""
    d = tmp_path / "l"
    with us.Log(d) as log:
        log.create_topic("t", partitions=3, segment_bytes=1 << 20)
    acks_file = tmp_path / "acks"
    here = os.path.dirname(os.path.abspath(__file__))
    out = run_child(PRODUCER_CHILD, d, acks_file, here, 60_000)
    assert out.returncode == 0, out.stderr
    kinds = eval(out.stdout.strip().splitlines()[-1])
    assert kinds and set(kinds) == {("DeliveryTimeoutError", "DiskFullError", EFBIG)}, kinds
    acked, errors = read_acks(acks_file)
    assert len(acked) > 100 and not errors
    res = check_log(d, "t", acked, figures)
    assert res["checked"] == len(acked)
    # Room again: the same producer id goes on, nothing acknowledged is repeated.
    out = run_child(PRODUCER_CHILD.replace("p0|0|", "p0|1|").replace(b"p0 0".decode(), "p0 1"),
                    d, acks_file, here, 1 << 40)
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout.strip().splitlines()[-1]) == {}
    acked2, _ = read_acks(acks_file)
    assert len(acked2) == len(acked) + 3000           # the limit is gone: all of them
    res = check_log(d, "t", acked2, figures)
    figures.add("disk_full_cases", sum(kinds.values()))
    figures.add("acked_records_checked", res["checked"])


OFFSETS_CHILD = textwrap.dedent("""
    import json, resource, sys
    from unstoppable.storage.groups import OffsetsFile
    from unstoppable.errors import DiskFullError
    f = OffsetsFile(sys.argv[1], "g", compact_bytes=1 << 30)
    f.commit({("t", 0): 0})
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    last, err = None, None
    for i in range(1, 1000):
        try:
            f.commit({("t", i % 3): i, ("long-topic-name-%d" % (i % 5), 0): i})
            last = i
        except DiskFullError as e:
            err = [e.errno, str(e)]
            break
    print(json.dumps({"last": last, "err": err, "loaded": sorted(map(list, f.load().items()))}))
""")


def test_group_offset_commit_under_efbig(tmp_path, figures):
    d = tmp_path / "l"
    us.Log(d).close()
    out = run_child(OFFSETS_CHILD, d)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["err"] and res["err"][0] == EFBIG, res
    last = res["last"]
    f = OffsetsFile(str(d), "g")
    got = f.load()
    want = {("t", last % 3): last, ("long-topic-name-%d" % (last % 5), 0): last}
    assert all(got[k] == v for k, v in want.items()), (got, want)
    assert sorted([list(k), v] for k, v in got.items()) == res["loaded"]
    f.commit({("t", 0): 12345})                       # no limit here: room again
    assert OffsetsFile(str(d), "g").load()[("t", 0)] == 12345
    f.close()
    figures.add("disk_full_cases")


# ------------------------------------------------------ a small file system

class SmallFS:
    """A mounted file system of a few hundred KiB, and filler files that take
    its free space one page at a time (so tests can give back exactly N pages)."""

    def __init__(self, path):
        self.path = str(path)
        self.fillers: list[str] = []

    def fill(self) -> None:
        k = len(self.fillers)
        while True:
            p = os.path.join(self.path, f"filler{k}")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, b"f" * 4096)
            except OSError:
                os.close(fd)
                os.unlink(p)
                break
            os.close(fd)
            self.fillers.append(p)
            k += 1
        # The last few bytes too (a file system may allow a partial page).
        p = os.path.join(self.path, "filler-tail")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                os.write(fd, b"t" * 512)
        except OSError:
            pass
        os.close(fd)

    def free(self, pages: int | None = None) -> None:
        """Give back ``pages`` pages (all of them with None)."""
        n = len(self.fillers) if pages is None else pages
        for _ in range(n):
            os.unlink(self.fillers.pop())
        if pages is None and os.path.exists(os.path.join(self.path, "filler-tail")):
            os.unlink(os.path.join(self.path, "filler-tail"))


def _mount(kind: str, mnt, tmp_path, size_kib: int):
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mnt.mkdir()
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)]
    else:
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("no mkfs.ext4")
        img = tmp_path / "fs.img"
        with open(img, "wb") as f:
            f.truncate(size_kib * 1024)
        r = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"mkfs.ext4 failed: {r.stderr.strip()}")
        cmd = ["mount", "-o", "loop", str(img), str(mnt)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a {kind} here: {r.stderr.strip()}")
    return SmallFS(mnt)


@pytest.fixture
def small_fs(tmp_path, request):
    kind = getattr(request, "param", "tmpfs")
    mnt = tmp_path / "fs"
    fs = _mount(kind, mnt, tmp_path, 2048 if kind == "ext4" else 512)
    yield fs
    gc.collect()    # closed logs' mappings (the heads' among them) go with their objects
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)   # still in use: detach


@pytest.mark.parametrize("small_fs", ["tmpfs", "ext4"], indirect=True)
@pytest.mark.parametrize("acks", ["written", "fsync"])
def test_a_full_file_system(small_fs, acks, figures):
    """The log fills the file system itself: a clean error, acknowledged
    records intact, and appends again once some space is freed."""
    d = os.path.join(small_fs.path, "log")
    absorbed = sigbus_absorbed()
    with us.Log(d) as log:
        other = log.create_topic("other", segment_bytes=16384)
        p = log.create_topic("t", partitions=2, segment_bytes=65536, index_interval_bytes=256)
        other.partition(0).append([b"o" * 1000] * 60)      # space to give back later
        acked = {0: [], 1: []}
        errors = 0
        i = 0
        while errors < 6:
            part = i % 2
            v = b"%06d:" % i + b"v" * (50 + i % 700)
            try:
                p.partition(part).append([v], acks=acks)
                acked[part].append(v)
            except DiskFullError as e:
                assert e.errno in (ENOSPC, EFBIG) and "no space" in str(e)
                errors += 1
            i += 1
            assert i < 100_000
        for part in (0, 1):
            q = p.partition(part)
            assert q.end_offset == len(acked[part])
            assert [v for _, v in read_partition(q)] == acked[part]
        log.delete_topic("other")                          # room again
        for part in (0, 1):
            assert p.partition(part).append([b"again"], acks=acks) == len(acked[part])
        assert log.verify().ok
    with us.Log(d) as log:
        for part in (0, 1):
            q = log.topic("t").partition(part)
            assert [v for _, v in read_partition(q)] == acked[part] + [b"again"]
    assert sigbus_absorbed() == absorbed
    figures.add("disk_full_cases", errors)


def test_index_write_finds_no_room(small_fs, figures):
    """The batch fits in the segment's last page but its index entry needs a
    new page: the append is refused and its bytes are cut off again."""
    d = os.path.join(small_fs.path, "log")
    with us.Log(d) as log:
        # Five 121-byte batches (61-byte header), the first index entry due at 700.
        p = log.create_topic("t", index_interval_bytes=700).partition(0)
        for i in range(5):
            p.append([b"r%d" % i + b"." * 50])
        st = p._head.read()
        assert st.oi_count == 0 and st.active_size < 700
        seg = os.path.join(p.path, "00000000000000000000.log")
        small_fs.fill()
        refused = 0
        for i in range(20):                               # until an index entry is due
            size = os.path.getsize(seg)
            try:
                p.append([b"s%d" % i + b"." * 50])
            except DiskFullError as e:
                assert e.errno == ENOSPC
                assert os.path.getsize(seg) == size        # the data write was undone
                refused += 1
                break
        assert refused and p._head.read().oi_count == 0
        n = p.end_offset
        assert n > 5                                      # the appends before it fitted
        small_fs.free(2)                                  # a page per index file
        assert p.append([b"room"]) == n
        assert p._head.read().oi_count == 1
        assert bytes(p.read(n)[0].value) == b"room"
        assert log.verify().ok
    figures.add("disk_full_cases", refused)


def test_a_roll_finds_no_room_for_the_producer_snapshot(small_fs, figures):
    d = os.path.join(small_fs.path, "log")
    with us.Log(d) as log:
        p = log.create_topic("t", segment_bytes=8192, index_interval_bytes=1 << 20).partition(0)
        seq = 0
        while p._head.read().active_size < 8192 - 300:
            p.append([b"x" * 100], producer_id=3, producer_epoch=0, base_sequence=seq)
            seq += 1
        end = p.end_offset
        # The blocks reserved ahead of the active segment (64 KiB, which this
        # file system has room for) go back first, or the roll, which gives
        # them back, would find room there.
        p._give_back_reserved()
        small_fs.fill()
        for _ in range(3):
            with pytest.raises(DiskFullError, match="no space to roll"):
                p.append([b"y" * 500], producer_id=3, producer_epoch=0, base_sequence=seq)
        assert p.end_offset == end and p._head.read().active_base == 0
        assert sorted(f for f in os.listdir(p.path) if "producers" in f) == []  # no torn snapshot left
        small_fs.free()
        assert p.append([b"y" * 500], producer_id=3, producer_epoch=0, base_sequence=seq) == end
        assert p._head.read().active_base == end
        assert p.producer_state(3) == (0, seq + 1)
        assert log.verify().ok
    with us.Log(d) as log:
        assert log.topic("t").partition(0).producer_state(3) == (0, seq + 1)
    figures.add("disk_full_cases", 3)


HEAD_CHILD = textwrap.dedent("""
    import os, sys
    import unstoppable as us
    from unstoppable._core.segment import sigbus_absorbed
    from unstoppable.errors import DiskFullError
    d, mnt = sys.argv[1], sys.argv[2]
    fillers = []
    def fill():
        while True:
            p = os.path.join(mnt, "filler%d" % len(fillers))
            fd = os.open(p, os.O_WRONLY | os.O_CREAT)
            try:
                os.write(fd, b"f" * 4096)
            except OSError:
                os.close(fd); os.unlink(p); return
            os.close(fd); fillers.append(p)
    log = us.Log(d)
    log.create_topic("a")
    fill()
    for _ in range(2):          # room for the topic's files, not for eight heads
        os.unlink(fillers.pop())
    try:
        b = log.create_topic("b", partitions=8)
        for i in range(8):      # partitions open (and make their heads) on first use
            b.partition(i)
        print("created")
    except DiskFullError as e:
        print("refused", e.errno, "no space to open" in str(e))
    print("absorbed", sigbus_absorbed())
    for p in fillers:
        os.unlink(p)
    t = log.topic("b")
    t.partition(7).append([b"seen"])
    other = us.Log(d)            # another handle sees the head on disk
    print("other", other.topic("b").partition(7).end_offset)
    other.close()
    log.close()
""")


def test_opening_a_partition_finds_no_room_for_its_head(small_fs, figures):
    """A new partition's head used to be made by ftruncate: a hole. The first
    store through its mapping on a full file system raised SIGBUS, which the
    guard turned into a private zero page: the partition then ran on a head
    no other process could see (and that was never on disk). In a child
    without faulthandler, so the guard (not pytest's handler) sees a SIGBUS."""
    out = run_child(HEAD_CHILD, os.path.join(small_fs.path, "log"), small_fs.path)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["refused", "28", "True", "absorbed", "0", "other", "1"], out.stdout
    figures.add("disk_full_cases")


def test_compacting_an_offsets_file_finds_no_room(small_fs, figures):
    """Compaction writes the latest offsets to a new file and renames it over
    the old one. On a full disk the write came up short without an error, the
    short file was renamed over the offsets, and every committed offset of the
    group was gone (while commit() returned normally)."""
    d = os.path.join(small_fs.path, "log")
    us.Log(d).close()
    f = OffsetsFile(d, "g", compact_bytes=1024)
    for i in range(60):
        f.commit({("topic-with-a-long-name-%d" % (i % 40), i % 40): i}, sync=False)
    before = f.load()
    assert os.path.getsize(f.path) > 1024 and len(before) == 40
    small_fs.fill()
    small_fs.free(1)
    with pytest.raises(DiskFullError):
        f.commit({("another-long-topic-name-%d" % i, i): i for i in range(200)})
    assert OffsetsFile(d, "g").load() == before
    assert [n for n in os.listdir(os.path.dirname(f.path)) if ".tmp" in n] == []
    small_fs.free()
    f.commit({("another-long-topic-name-%d" % i, i): i for i in range(200)})
    assert len(OffsetsFile(d, "g").load()) == 240
    f.close()
    figures.add("disk_full_cases")
