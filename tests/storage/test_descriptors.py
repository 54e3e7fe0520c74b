"""Descriptors: partitions open on first use; running out of descriptors
(EMFILE) is a library error naming the limit and how to raise it; topic
creation is all or nothing. Each case runs in a child process with its own
RLIMIT_NOFILE."""
import json
import os
import subprocess
import sys

import unstoppable as us

SRC = os.path.dirname(os.path.dirname(us.__file__))

CHILD = r"""
import json, os, resource, sys
import unstoppable as us
from unstoppable.errors import TooManyOpenFilesError
path = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
out = {}
log = us.Log(path)
# 1. Many partitions cost nothing until used.
t = log.create_topic("many", partitions=300)
out["created"] = t.partitions
out["fds_after_create"] = len(os.listdir("/proc/self/fd"))
# 2. Using them runs out: a library error, naming the limit.
written = 0
try:
    for i in range(300):
        t.partition(i).append([b"%d" % i])
        written += 1
except TooManyOpenFilesError as e:
    out["error"] = str(e)
    out["errno"] = e.errno
out["written"] = written
# 3. Topic creation with no descriptor left: nothing is left behind.
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
# 4. With the limit raised, everything written is there and the rest works.
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
for i in range(written, 300):
    t.partition(i).append([b"%d" % i])
out["values"] = [bytes(t.partition(i).read(0)[0].value).decode() for i in range(300)]
out["verify"] = log.verify().ok
log.close()
print(json.dumps(out))
"""


def test_emfile_is_a_library_error_and_creation_is_all_or_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "log")], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["created"] == 300
    assert out["fds_after_create"] < 40  # no partition opened by creating the topic
    assert 0 < out["written"] < 300
    assert out["errno"] == 24
    msg = out["error"]
    assert "opening partition many/" in msg and "128" in msg and "ulimit -n" in msg
    assert "creating topic 'half'" in out["create_when_full"] and "128" in out["create_when_full"]
    assert out["topics"] == ["many"]
    assert out["staging"] == [] and out["topic_dirs"] == ["many"]
    assert out["values"] == [str(i) for i in range(300)]
    assert out["verify"] is True
