"""Descriptors: partitions open on first use and the log keeps at most
``max_open_partitions`` of them open (least recently used idle ones let go
of their files and reopen on next use); running out of descriptors (EMFILE)
when that bound cannot be kept is a library error naming the limit and how
to raise it; topic creation is all or nothing. The limit cases run in a
child process with its own RLIMIT_NOFILE."""
import json
import os
import random
import subprocess
import sys
import threading

import unstoppable as us
from unstoppable.storage.open_partitions import default_max_open_partitions

SRC = os.path.dirname(os.path.dirname(us.__file__))


def run_child(code: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


MANY = r"""
import json, os, resource, sys
import unstoppable as us
path, n = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
def fds():
    return len(os.listdir("/proc/self/fd"))
out = {"fds0": fds()}
log = us.Log(path)
out["bound"] = log.max_open_partitions
t = log.create_topic("many", partitions=n)
# Zero-copy views read from partition 0, held while it is let go.
p0 = t.partition(0)
p0.append([b"first"])
held = p0.read(0)
most_fds = most_open = 0
for rnd in range(2):
    for i in range(n):
        t.partition(i).append([(b"k%d" % i, b"%d/%d" % (i, rnd))])
        if i % 50 == 0:
            most_fds = max(most_fds, fds())
            most_open = max(most_open, log.open_partitions)
out["p0_parked"] = p0.parked
out["held"] = bytes(held[0].value).decode()
out["most_fds"], out["most_open"] = most_fds, most_open
out["parked"] = log._open_partitions.parked
bad = []
for i in range(n):
    got = [bytes(r.value).decode() for r in t.partition(i).read(0)]
    want = (["first"] if i == 0 else []) + ["%d/0" % i, "%d/1" % i]
    if got != want:
        bad.append((i, got))
out["bad"] = bad[:5]
out["verify"] = log.verify().ok
log.close()
with us.Log(path) as log:
    t = log.topic("many")
    out["ends"] = sorted({t.partition(i).end_offset for i in range(1, n)})
    out["verify_reopened"] = log.verify().ok
    out["most_open_reopened"] = log.open_partitions
print(json.dumps(out))
"""


def test_a_thousand_partitions_under_ulimit_256(tmp_path):
    out = run_child(MANY, tmp_path / "log", 1000)
    assert out["bound"] == default_max_open_partitions(256) == 32
    assert out["bad"] == []
    assert out["verify"] is True and out["verify_reopened"] is True
    assert out["ends"] == [2]
    # Within the bound throughout, and far below the limit.
    assert out["most_open"] <= 32 and out["most_open_reopened"] <= 32
    assert out["most_fds"] < 256 - 64, out
    assert out["parked"] >= 2 * 1000 - 32
    # A partition let go keeps the views handed out from it valid.
    assert out["p0_parked"] is True and out["held"] == "first"


LIMITS = r"""
import json, os, resource, sys
import unstoppable as us
from unstoppable.errors import TooManyOpenFilesError
path = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
out = {}
log = us.Log(path)
out["bound"] = log.max_open_partitions
t = log.create_topic("many", partitions=300)
out["fds_after_create"] = len(os.listdir("/proc/self/fd"))
for i in range(300):        # within the bound: 16 open at a time
    t.partition(i).append([b"%d" % i])
out["most_open"] = log.open_partitions
# No descriptor left, and none to win back (every partition is let go
# first): the library error, naming the limit, for an append, a read and
# a topic creation, which leaves nothing behind.
hog = []
def hog_all():
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
for what, do in (("append", lambda: t.partition(0).append([b"late"])),
                 ("read", lambda: t.partition(1).read(0)),
                 ("open", lambda: log.create_topic("other").partition(0).append([b"x"]))):
    hog_all()  # (what an error let go of, too)
    try:
        do()
        out[what] = "done"
    except TooManyOpenFilesError as e:
        out[what] = [e.errno, str(e)]
    if what == "read":
        out["parked_all"] = log.open_partitions
for fd in hog:
    os.close(fd)
out["topics"] = log.topics()
out["staging"] = os.listdir(os.path.join(path, "staging"))
out["topic_dirs"] = sorted(os.listdir(os.path.join(path, "topics")))
# With descriptors free again everything carries on, and nothing was lost.
t.partition(0).append([b"late"])
out["values"] = [[bytes(r.value).decode() for r in t.partition(i).read(0)] for i in range(300)]
out["verify"] = log.verify().ok
log.close()
print(json.dumps(out))
"""


def test_emfile_past_the_bound_is_a_library_error_and_creation_is_all_or_nothing(tmp_path):
    out = run_child(LIMITS, tmp_path / "log")
    assert out["bound"] == 16
    assert out["fds_after_create"] < 40  # no partition opened by creating the topic
    assert out["most_open"] <= 16
    for what, doing in (("append", "appending to partition many/0"),
                        ("read", "reading partition many/1"),
                        ("open", "creating topic 'other'")):
        errno_, msg = out[what]
        assert errno_ == 24, (what, msg)
        assert doing in msg and "128" in msg and "ulimit -n" in msg, (what, msg)
    assert out["parked_all"] == 0
    assert out["topics"] == ["many"]
    assert out["staging"] == [] and out["topic_dirs"] == ["many"]
    assert out["values"] == [[str(i)] + (["late"] if i == 0 else []) for i in range(300)]
    assert out["verify"] is True


def test_threads_appending_and_reading_while_partitions_come_and_go(tmp_path):
    """Four threads append to and read random partitions of 60, with room
    for 4 open: partitions are let go and reopened under them all the time,
    and every partition ends up holding exactly what was appended to it,
    in order."""
    n, per_thread = 60, 400
    with us.Log(tmp_path / "log", max_open_partitions=4) as log:
        t = log.create_topic("t", partitions=n)
        errors = []

        def work(k):
            rnd = random.Random(k)
            try:
                for j in range(per_thread):
                    i = rnd.randrange(n)
                    p = t.partition(i)
                    p.append([(b"%d" % k, b"%d" % j)])
                    if j % 3 == 0:
                        rs = p.read(max(p.start_offset, p.end_offset - 2))
                        assert rs and all(r.key is not None for r in rs)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert log.open_partitions <= 4
        assert log._open_partitions.parked > 100
        # Each thread's appends to one partition are in its order.
        total = 0
        for i in range(n):
            seen = {}
            for r in t.partition(i).read(0, max_records=10_000):
                k, j = int(bytes(r.key)), int(bytes(r.value))
                assert j > seen.get(k, -1)
                seen[k] = j
                total += 1
        assert total == 4 * per_thread
        assert log.verify().ok


def test_max_open_partitions_is_checked(tmp_path):
    import pytest
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="max_open_partitions"):
            us.Log(tmp_path / "log", max_open_partitions=bad)
    assert default_max_open_partitions(1024) == 128
    assert default_max_open_partitions(16) == 8


def test_a_consumer_of_many_partitions_stays_within_the_bound(tmp_path):
    """A consumer reading (and waiting on) 100 partitions with room for 8
    open: every record arrives, including ones appended while it waits, and
    waiting keeps nothing open past the bound."""
    import asyncio
    with us.Log(tmp_path / "log", max_open_partitions=8) as log:
        t = log.create_topic("t", partitions=100)
        for i in range(100):
            t.partition(i).append([b"%d" % i])

        async def main():
            got = set()
            most = 0
            async with us.Consumer(log, "t") as c:
                while len(got) < 100:
                    for recs in (await c.getmany(timeout_ms=100)).values():
                        got.update(bytes(r.value) for r in recs)
                    most = max(most, log.open_partitions)
                # Appends while it waits in getmany wake it.
                loop = asyncio.get_running_loop()
                loop.call_later(0.05, lambda: [t.partition(i).append([b"late%d" % i])
                                               for i in range(0, 100, 10)])
                while len(got) < 110:
                    for recs in (await c.getmany(timeout_ms=2000)).values():
                        got.update(bytes(r.value) for r in recs)
                    most = max(most, log.open_partitions)
            return got, most

        got, most = asyncio.run(asyncio.wait_for(main(), 60))
        assert got == {b"%d" % i for i in range(100)} | {b"late%d" % i for i in range(0, 100, 10)}
        assert most <= 8 and log.open_partitions <= 8
        assert log._open_partitions.parked >= 90
