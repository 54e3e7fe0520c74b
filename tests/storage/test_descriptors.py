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
# A bound the limit cannot keep, and partitions that cannot be let go (a
# consumer waits on each): running out is a library error naming the limit.
log = us.Log(path, max_open_partitions=10_000)
t = log.create_topic("many", partitions=300)
out["fds_after_create"] = len(os.listdir("/proc/self/fd"))
written = 0
try:
    for i in range(300):
        p = t.partition(i)
        p.add_listener(lambda: None)
        p.append([b"%d" % i])
        written += 1
except TooManyOpenFilesError as e:
    out["error"] = str(e)
    out["errno"] = e.errno
out["written"] = written
# Topic creation with no descriptor left: nothing is left behind.
hog = []
try:
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    log.create_topic("half", partitions=50)
    out["create_when_full"] = "created"
except TooManyOpenFilesError as e:
    out["create_when_full"] = str(e)
for fd in hog:
    os.close(fd)
out["topics"] = log.topics()
out["staging"] = os.listdir(os.path.join(path, "staging"))
out["topic_dirs"] = sorted(os.listdir(os.path.join(path, "topics")))
# With the default bound the same log carries on within the limit: idle
# partitions are let go as more open.
log.close()
log = us.Log(path)
out["bound"] = log.max_open_partitions
t = log.topic("many")
for i in range(written, 300):
    t.partition(i).append([b"%d" % i])
out["values"] = [bytes(t.partition(i).read(0)[0].value).decode() for i in range(300)]
out["verify"] = log.verify().ok
log.close()
print(json.dumps(out))
"""


def test_emfile_past_the_bound_is_a_library_error_and_creation_is_all_or_nothing(tmp_path):
    out = run_child(LIMITS, tmp_path / "log")
    assert out["fds_after_create"] < 40  # no partition opened by creating the topic
    assert 0 < out["written"] < 300
    assert out["errno"] == 24
    msg = out["error"]
    assert "many/" in msg and "128" in msg and "ulimit -n" in msg, msg
    assert "creating topic 'half'" in out["create_when_full"] and "128" in out["create_when_full"]
    assert out["topics"] == ["many"]
    assert out["staging"] == [] and out["topic_dirs"] == ["many"]
    assert out["values"] == [str(i) for i in range(300)]
    assert out["verify"] is True
    assert out["bound"] == 16


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
