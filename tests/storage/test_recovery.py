"""Recovery: torn tails at every byte, lost page cache after a reboot, bit flips,
damaged or missing indexes and heads, and a writer killed with SIGKILL."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import unstoppable as us
from unstoppable.errors import CorruptLogError

SEG = "00000000000000000000"
HEAD_BOOT_ID = 72


def build(path, appends=12, per=3, segment_bytes=1 << 20):
    """A log with one partition; returns (expected values per offset, head bytes
    before the last append, position of the last batch)."""
    log = us.Log(path)
    p = log.create_topic("t", segment_bytes=segment_bytes, index_interval_bytes=128).partition(0)
    expected = []
    head_before = pos_before = None
    for i in range(appends):
        recs = [(b"k%d" % i, b"value-%d-%d-" % (i, j) + b"z" * 20, [("n", b"%d" % j)]) for j in range(per)]
        if i == appends - 1:
            head_before = Path(os.path.join(p.path, "head")).read_bytes()
            pos_before = os.path.getsize(os.path.join(p.path, SEG + ".log"))
        p.append(recs, timestamp=1_000 + i)
        expected += [r[1] for r in recs]
    return log, p.path, expected, head_before, pos_before


def check_prefix(path, expected, n):
    """Reopen; the partition must hold exactly the first n expected records and
    accept a new append at offset n."""
    with us.Log(path) as log:
        p = log.topic("t").partition(0)
        assert p.end_offset == n, (p.end_offset, n, p.recovery)
        got = []
        off = 0
        while off < n:
            rs = p.read(off, max_records=1000)
            got += [bytes(r.value) for r in rs]
            off = rs[-1].offset + 1
        assert got == expected[:n]
        assert p.append([b"after"]) == n
        assert bytes(p.read(n)[0].value) == b"after"
        rep = log.verify()
        assert rep.ok, rep.problems
        return p.recovery


@pytest.fixture
def template(tmp_path):
    src = tmp_path / "template"
    log, ppath, expected, head_before, pos_before = build(src)
    # Leave the log open (no clean close): the copies look like a live or crashed writer's.
    yield src, os.path.relpath(ppath, src), expected, head_before, pos_before, log
    log.close()


def test_torn_tail_at_every_byte_of_the_last_batch(template, tmp_path):
    """A writer killed mid-append: the head still describes the previous state,
    and any prefix of the last batch may be in the file."""
    src, rel, expected, head_before, pos_before, _ = template
    full = os.path.getsize(os.path.join(src, rel, SEG + ".log"))
    n_before = len(expected) - 3
    for cut in range(pos_before, full + 1):
        dst = tmp_path / f"c{cut}"
        shutil.copytree(src, dst)
        part = os.path.join(dst, rel)
        with open(os.path.join(part, "head"), "wb") as f:
            f.write(head_before)
        os.truncate(os.path.join(part, SEG + ".log"), cut)
        rec = check_prefix(dst, expected, n_before)
        assert rec.mode == "tail" and rec.truncated_bytes == cut - pos_before
        shutil.rmtree(dst)


def _reboot(part):
    """Make the head look written before a reboot: another boot id."""
    with open(os.path.join(part, "head"), "r+b") as f:
        f.seek(HEAD_BOOT_ID)
        f.write(b"\xee" * 16)


def test_after_reboot_every_truncation_keeps_the_longest_valid_prefix(template, tmp_path):
    """Power loss: the head may be ahead of what reached the disk. Recovery scans
    from the checkpoint and keeps only whole, CRC-valid batches."""
    src, rel, expected, head_before, pos_before, _ = template
    full = os.path.getsize(os.path.join(src, rel, SEG + ".log"))
    for cut in range(pos_before, full + 1):
        dst = tmp_path / f"r{cut}"
        shutil.copytree(src, dst)
        part = os.path.join(dst, rel)
        _reboot(part)
        os.truncate(os.path.join(part, SEG + ".log"), cut)
        n = len(expected) if cut == full else len(expected) - 3
        rec = check_prefix(dst, expected, n)
        assert rec.mode == "checkpoint"
        shutil.rmtree(dst)


def test_after_reboot_flipped_bits_zeroed_pages_and_garbage(template, tmp_path):
    src, rel, expected, head_before, pos_before, _ = template
    full = os.path.getsize(os.path.join(src, rel, SEG + ".log"))
    cases = []
    for i in range(pos_before + 8, full, 7):  # every 7th byte of the last batch, one bit each
        cases.append(("flip", i))
    cases += [("zero", None), ("garbage", None)]
    for kind, i in cases:
        dst = tmp_path / "x"
        shutil.copytree(src, dst)
        part = os.path.join(dst, rel)
        _reboot(part)
        seg = os.path.join(part, SEG + ".log")
        with open(seg, "r+b") as f:
            if kind == "flip":
                f.seek(i)
                b = f.read(1)[0]
                f.seek(i)
                f.write(bytes([b ^ 0x10]))
                n = len(expected) - 3
            elif kind == "zero":
                f.seek(pos_before)
                f.write(b"\0" * (full - pos_before))
                n = len(expected) - 3
            else:
                f.seek(full)
                f.write(os.urandom(3000))
                n = len(expected)
        check_prefix(dst, expected, n)
        shutil.rmtree(dst)


def test_clean_close_is_the_shutdown_marker(tmp_path):
    log, ppath, expected, _, _ = build(tmp_path / "l")
    log.close()
    _reboot(ppath)
    rec = check_prefix(tmp_path / "l", expected, len(expected))
    assert rec.mode == "checkpoint" and rec.scanned_bytes == 0


def test_recovery_work_is_bounded_by_the_unflushed_tail(tmp_path):
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", segment_bytes=1 << 20).partition(0)
    for i in range(100):
        p.append([b"x" * 1000] * 10)
    p.flush()
    flushed = os.path.getsize(os.path.join(p.path, SEG + ".log"))
    p.append([b"y" * 1000] * 5)
    unflushed = os.path.getsize(os.path.join(p.path, SEG + ".log")) - flushed
    shutil.copytree(tmp_path / "l", tmp_path / "c")
    log.close()
    part = os.path.join(tmp_path / "c", os.path.relpath(p.path, tmp_path / "l"))
    _reboot(part)
    with us.Log(tmp_path / "c") as log2:
        r = log2.topic("t").partition(0).recovery
        assert r.mode == "checkpoint" and r.scanned_bytes == unflushed
        assert log2.topic("t").partition(0).end_offset == 1005


def test_missing_and_corrupt_indexes_are_rebuilt(tmp_path):
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", segment_bytes=8192, index_interval_bytes=300).partition(0)
    for i in range(300):
        p.append([b"%06d" % i + b"." * 60])
    log.close()
    files = sorted(os.listdir(p.path))
    sealed = [f for f in files if f.endswith(".index")][:-1]
    os.unlink(os.path.join(p.path, sealed[0]))                                   # missing
    with open(os.path.join(p.path, sealed[1]), "r+b") as f:                      # zeroed entries
        f.seek(8)
        f.write(b"\0" * 16)
    with open(os.path.join(p.path, sealed[2]), "ab") as f:                       # half an entry
        f.write(b"\x01\x02\x03")
    with open(os.path.join(p.path, sealed[3].replace(".index", ".timeindex")), "r+b") as f:
        f.write(b"\xff" * 16)                                                    # nonsense
    active_idx = [f for f in files if f.endswith(".index")][-1]
    os.unlink(os.path.join(p.path, active_idx))                                  # active one too
    with us.Log(tmp_path / "l") as log:
        q = log.topic("t").partition(0)
        for off in range(0, 300, 7):
            assert bytes(q.read(off, max_records=1)[0].value[:6]) == b"%06d" % off
        assert q.offset_for_time(0) == 0
        rep = log.verify()
        assert rep.ok, rep.problems
        assert os.path.getsize(os.path.join(p.path, sealed[0])) > 0


def test_head_lost_is_rebuilt_from_segments(tmp_path):
    log, ppath, expected, _, _ = build(tmp_path / "l", segment_bytes=4096)
    log.close()
    os.unlink(os.path.join(ppath, "head"))
    rec = check_prefix(tmp_path / "l", expected, len(expected))
    assert rec.mode == "rebuild"
    with open(os.path.join(ppath, "head"), "r+b") as f:
        f.write(b"JUNK")
    rec = check_prefix(tmp_path / "l", expected + [b"after"], len(expected) + 1)
    assert rec.mode == "rebuild"


def test_corruption_in_sealed_data_is_reported_with_its_place(tmp_path):
    log, ppath, expected, _, _ = build(tmp_path / "l", appends=60, segment_bytes=4096)
    log.close()
    segs = sorted(f for f in os.listdir(ppath) if f.endswith(".log"))
    victim = os.path.join(ppath, segs[1])
    base = int(segs[1][:20])
    with open(victim, "r+b") as f:
        f.seek(70)
        b = f.read(1)[0]
        f.seek(70)
        f.write(bytes([b ^ 1]))
    before = Path(victim).read_bytes()
    with us.Log(tmp_path / "l") as log:
        p = log.topic("t").partition(0)
        assert p.end_offset == len(expected)      # sealed data is not truncated
        with pytest.raises(CorruptLogError) as ei:
            p.read(base)
        e = ei.value
        assert (e.topic, e.partition, e.segment, e.offset) == ("t", 0, victim, base)
        assert "CRC" in str(e)
        # Reads elsewhere still work, and never return the damaged batch's bytes.
        assert bytes(p.read(0, max_records=1)[0].value) == expected[0]
        rep = log.verify()
        assert not rep.ok
        assert [(x.segment, x.offset) for x in rep.problems] == [(victim, base)]
    assert Path(victim).read_bytes() == before  # verify and reads changed nothing


WRITER = textwrap.dedent("""
    import sys, unstoppable as us
    log = us.Log(sys.argv[1])
    p = log.create_topic("t", segment_bytes=1 << 16).partition(0)
    i = 0
    out = sys.stdout
    while True:
        recs = [b"%d-%d" % (i, j) + b"." * (i % 300) for j in range(1 + i % 5)]
        base = p.append(recs, acks=sys.argv[2])
        out.write("%d %d %d\\n" % (i, base, len(recs)))
        out.flush()
        i += 1
""")


@pytest.mark.parametrize("acks", ["written", "fsync"])
def test_writer_killed_with_sigkill(tmp_path, acks):
    script = tmp_path / "w.py"
    script.write_text(WRITER)
    for round_ in range(5):
        d = tmp_path / f"k{round_}"
        proc = subprocess.Popen([sys.executable, str(script), str(d), acks], stdout=subprocess.PIPE)
        # Kill while it writes: wait for its first ack (start-up under load can
        # take longer than any fixed sleep), then let it run a little.
        first = proc.stdout.readline()
        time.sleep(0.05 + 0.1 * round_)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = (first + out).decode().splitlines()
        acked = [tuple(map(int, line.split())) for line in lines if line.count(" ") == 2]
        assert acked, "the writer acknowledged nothing"
        t0 = time.perf_counter()
        with us.Log(d) as log:
            p = log.topic("t").partition(0)
            elapsed = time.perf_counter() - t0
            assert elapsed < 2
            last_i, last_base, last_n = acked[-1]
            assert p.end_offset >= last_base + last_n
            for i, base, n in acked:
                rs = p.read(base, max_records=n)
                assert [bytes(r.value).split(b".")[0] for r in rs] == [b"%d-%d" % (i, j) for j in range(n)]
            assert log.verify().ok
