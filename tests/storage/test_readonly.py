"""Read-only logs: ``Log(path, readonly=True)``, and a log that opens
read-only on its own because its directory cannot be written (a read-only
bind mount: EROFS; a process without CAP_DAC_OVERRIDE over files it may not
write: EACCES). Nothing under the log may change, and reads, verify, consumers
without a group and exports must work."""
import asyncio
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import unstoppable as us
from unstoppable.errors import ReadOnlyLogError

SRC = os.path.dirname(os.path.dirname(us.__file__))


def tree(root):
    """Every file under root with its size, mtime and content hash."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.join(d, name)] = "dir"
        for name in files:
            p = os.path.join(d, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def make_log(path, n=400):
    """Two topics; ``a`` spans several segments per partition."""
    with us.Log(path) as log:
        a = log.create_topic("a", partitions=2, segment_bytes=8192)
        for i in range(n):
            a.partition(i % 2).append([(b"k%d" % i, b"v%d-" % i * 8)], timestamp=1_700_000_000_000 + i)
        log.create_topic("empty", partitions=1)
    return {(p, r.offset): (bytes(r.key), bytes(r.value))
            for p in range(2) for r in _read_all(us.Log(path, readonly=True), p)}


def _read_all(log, p):
    try:
        part = log.topic("a").partition(p)
        out, off = [], part.start_offset
        while True:
            recs = part.read(off, max_records=10_000)
            if not recs:
                return out
            out += recs
            off = recs[-1].offset + 1
    finally:
        log.close()


def check_reads_and_refusals(log, expected):
    """What a read-only log must do, and must refuse."""
    assert log.readonly
    assert "read-only" in repr(log)
    assert log.topics() == ["a", "empty"]
    got = {}
    t = log.topic("a")
    for p in range(2):
        part = t.partition(p)
        off = part.start_offset
        while True:
            recs = part.read(off, max_records=10_000)
            if not recs:
                break
            for r in recs:
                got[(p, r.offset)] = (bytes(r.key), bytes(r.value))
            off = recs[-1].offset + 1
    assert got == expected
    assert t.partition(1).offset_for_time(1_700_000_000_000 + 201) == 100
    rep = log.verify()
    assert rep.ok, rep
    assert rep.records == len(expected)
    assert t.to_arrow().num_rows == len(expected)
    with pytest.raises(ReadOnlyLogError, match="read-only"):
        t.partition(0).append([b"no"])
    with pytest.raises(ReadOnlyLogError, match="create topic 'new'"):
        log.create_topic("new")
    with pytest.raises(ReadOnlyLogError, match="delete topic 'a'"):
        log.delete_topic("a")
    with pytest.raises(ReadOnlyLogError):
        log.enforce_retention()
    with pytest.raises(ReadOnlyLogError):
        t.partition(1).append_encoded(None)
    # Asking for a topic that is there as asked writes nothing, so it works.
    assert log.create_topic("empty").partitions == 1
    log.flush()  # nothing of ours to sync: not an error


def test_readonly_true_reads_everything_and_writes_nothing(tmp_path):
    path = tmp_path / "log"
    expected = make_log(path)
    before = tree(path)
    with us.Log(path, readonly=True) as log:
        assert log.readonly_reason == "opened with readonly=True"
        check_reads_and_refusals(log, expected)

        async def consume():
            out = []
            async with us.Consumer(log, [("a", 0), ("a", 1)]) as c:
                while len(out) < len(expected):
                    batch = await c.getmany(timeout_ms=1000)
                    assert batch, "the consumer stopped before the end"
                    for recs in batch.values():
                        out += [(r.partition, r.offset) for r in recs]
            return out
        assert sorted(asyncio.run(consume())) == sorted(expected)

        async def group_consumer():
            async with us.Consumer(log, "a", group="g"):
                pass

        async def idempotent_producer():
            async with us.Producer(log, "a", producer_id="p"):
                pass
        with pytest.raises(ReadOnlyLogError, match="join consumer group 'g'"):
            asyncio.run(group_consumer())
        with pytest.raises(ReadOnlyLogError, match="claim producer id 'p'"):
            asyncio.run(idempotent_producer())
        pq = pytest.importorskip("pyarrow.parquet")
        out = tmp_path / "a.parquet"
        log.topic("a").to_batches()  # a stream opens without writing
        from unstoppable.arrow import export_parquet
        export_parquet(log.topic("a"), str(out))
        assert pq.read_table(out).num_rows == len(expected)
    assert tree(path) == before


def test_writable_open_is_unchanged(tmp_path):
    with us.Log(tmp_path / "log") as log:
        assert not log.readonly and log.readonly_reason is None
        assert "read-only" not in repr(log)


def test_readonly_missing_log_is_not_created(tmp_path):
    with pytest.raises(us.NotALogError):
        us.Log(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()


def test_torn_tail_is_ignored_in_memory_not_cut(tmp_path):
    """Bytes past the head (a crash mid-append) are ignored; the file keeps them."""
    path = tmp_path / "log"
    expected = make_log(path)
    pdir = path / "topics" / "a" / "0"
    active = sorted(pdir.glob("*.log"))[-1]
    size = active.stat().st_size
    with open(active, "ab") as f:
        f.write(b"\x7f" * 777)
    before = tree(path)
    with us.Log(path, readonly=True) as log:
        part = log.topic("a").partition(0)
        assert part.recovery.truncated_bytes == 777
        check_reads_and_refusals(log, expected)
    assert tree(path) == before
    assert active.stat().st_size == size + 777
    # A writable open cuts it, as before.
    with us.Log(path) as log:
        assert log.topic("a").partition(0).recovery.truncated_bytes == 777
    assert active.stat().st_size == size


def test_lost_head_is_rebuilt_in_memory(tmp_path):
    """No head file (and a torn tail): a scan rebuilds the head in memory,
    and no head file appears."""
    path = tmp_path / "log"
    expected = make_log(path)
    pdir = path / "topics" / "a" / "1"
    os.unlink(pdir / "head")
    active = sorted(pdir.glob("*.log"))[-1]
    with open(active, "ab") as f:
        f.write(b"\0\0\0\0\0\0\0\0garbage")
    before = tree(path)
    with us.Log(path, readonly=True) as log:
        rec = log.topic("a").partition(1).recovery
        assert rec.mode == "rebuild" and rec.truncated_bytes == 15
        check_reads_and_refusals(log, expected)
    assert tree(path) == before
    assert not (pdir / "head").exists()


@pytest.fixture
def ro_mount(tmp_path):
    """A read-only bind mount of tmp_path/src at tmp_path/ro (needs root)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root")
    r = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mount --bind failed: {r.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        yield src, ro
    finally:
        # Segment mappings live until the garbage collector frees the cycles
        # that hold them (as on a writable log); umount needs them gone.
        gc.collect()
        subprocess.run(["umount", str(ro)], check=True)


def test_read_only_mount_opens_read_only_on_its_own(ro_mount):
    src, ro = ro_mount
    expected = make_log(src / "log")
    before = tree(src / "log")
    with pytest.raises(OSError):
        open(ro / "log" / "probe", "w")  # the mount really is read-only
    log = us.Log(ro / "log")
    try:
        assert log.readonly
        assert "EROFS" in log.readonly_reason and "EROFS" in repr(log)
        check_reads_and_refusals(log, expected)
    finally:
        log.close()
    assert tree(src / "log") == before


def test_cli_reads_a_read_only_mount(ro_mount):
    """The CLI's reading commands work on a read-only mount; produce is
    refused with the library's message. (The CLI is another module's: this
    checks only that the library gives it what it needs.)"""
    src, ro = ro_mount
    make_log(src / "log")
    before = tree(src / "log")
    env = {**os.environ, "PYTHONPATH": SRC}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "unstoppable", "--log", str(ro / "log"),
                               *args], capture_output=True, text=True, env=env, input="x\n",
                              timeout=60)
    r = cli("topics", "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[3:6] == ["a", "2", "400"]
    for args in (("topics", "describe", "a"), ("verify",), ("tail", "a"), ("consume", "a"),
                 ("dump", "a")):
        r = cli(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.strip(), args
    r = cli("produce", "a")
    assert r.returncode != 0 and "read-only" in r.stderr
    assert tree(src / "log") == before


CHILD = r"""
import json, sys
import unstoppable as us
from unstoppable.errors import ReadOnlyLogError
log = us.Log(sys.argv[1])
out = {"readonly": log.readonly, "reason": log.readonly_reason, "repr": repr(log)}
p = log.topic("a").partition(0)
n = 0
for i in range(2):
    part = log.topic("a").partition(i)
    off = part.start_offset
    while recs := part.read(off, 10_000):
        n += len(recs)
        off = recs[-1].offset + 1
out["records"] = n
out["verify"] = log.verify().ok
try:
    p.append([b"x"])
    out["append"] = "accepted"
except ReadOnlyLogError as e:
    out["append"] = str(e)
log.close()
print(json.dumps(out))
"""


def test_without_dac_override_a_log_of_others_opens_read_only():
    """A process without CAP_DAC_OVERRIDE (setpriv drops it from the bounding
    set) over a log whose files and directories it may read but not write."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    base = tempfile.mkdtemp(prefix="us-ro-", dir="/tmp")
    try:
        path = os.path.join(base, "log")
        expected = make_log(path)
        for d, dirs, files in os.walk(path):
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
            os.chmod(d, 0o555)
        before = tree(path)
        r = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner",
             sys.executable, "-c", CHILD, path],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["readonly"] is True
        assert "EACCES" in out["reason"] and "read-only" in out["repr"]
        assert out["verify"] is True
        assert out["records"] == len(expected) == 400
        assert "read-only" in out["append"]
        assert tree(path) == before
    finally:
        for d, dirs, files in os.walk(base):
            os.chmod(d, 0o755)
        shutil.rmtree(base)
