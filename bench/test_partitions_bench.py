"""Many partitions (issue 18): open time and RSS of a log of 10,000
partitions (100 topics x 100), beside a same-run baseline (listing and
stat()ing the 10,000 partition directories, what an open that looked at
every partition would cost at least; a lazy open reads only topic.json), and
the descriptors and RSS each partition costs once used.

Run with:  python -m pytest bench/test_partitions_bench.py -s
Each measurement runs in a fresh child process, so RSS is its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import unstoppable as us

SRC = os.path.dirname(os.path.dirname(us.__file__))
TOPICS, PER_TOPIC = 100, 100
USED = 1500  # partitions written and read (6 descriptors each while open)

CHILD = r"""
import json, os, resource, sys, time
import unstoppable as us
path, what = sys.argv[1], sys.argv[2]
def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
def fds():
    return len(os.listdir("/proc/self/fd"))
out = {"rss0": rss_mib(), "fds0": fds()}
t0 = time.perf_counter()
if what == "create":
    with us.Log(path) as log:
        for i in range(%(topics)d):
            log.create_topic("t%%03d" %% i, partitions=%(per)d)
elif what == "baseline":
    n = 0
    for t in os.listdir(os.path.join(path, "topics")):
        d = os.path.join(path, "topics", t)
        for p in os.listdir(d):
            os.stat(os.path.join(d, p))
            n += p.isdigit()
    out["n"] = n
elif what == "open":
    log = us.Log(path)
    topics = [log.topic(n) for n in log.topics()]
    out["n"] = sum(t.partitions for t in topics)
elif what == "use":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log = us.Log(path)
    topics = [log.topic(n) for n in log.topics()]
    pairs = [(t, i) for t in topics for i in range(t.partitions)][:%(used)d]
    parts = [t.partition(i) for t, i in pairs]
    for p in parts:
        p.append([b"x" * 100])
    assert all(len(p.read(0)) >= 1 for p in parts)
    out["n"] = len(parts)
out["seconds"] = time.perf_counter() - t0
out["rss"] = rss_mib()
out["fds"] = fds()
print(json.dumps(out))
""" % {"topics": TOPICS, "per": PER_TOPIC, "used": USED}


def run(path, what):
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), what], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ten_thousand_partitions(tmp_path):
    path = tmp_path / "log"
    created = run(path, "create")
    base = min((run(path, "baseline") for _ in range(3)), key=lambda o: o["seconds"])
    opened = min((run(path, "open") for _ in range(3)), key=lambda o: o["seconds"])
    used = run(path, "use")
    n = TOPICS * PER_TOPIC
    assert base["n"] == opened["n"] == n
    print(f"\n{n:,} partitions ({TOPICS} topics x {PER_TOPIC}):")
    print(f"  create:                    {created['seconds']:.2f} s")
    print(f"  open log + all topics:     {opened['seconds'] * 1000:.1f} ms, "
          f"RSS +{opened['rss'] - opened['rss0']:.1f} MiB, descriptors +{opened['fds'] - opened['fds0']}")
    print(f"  baseline (list + stat):    {base['seconds'] * 1000:.1f} ms "
          f"(open / baseline = {opened['seconds'] / base['seconds']:.2f})")
    per_fd = (used["fds"] - used["fds0"]) / used["n"]
    per_rss = (used["rss"] - used["rss0"]) / used["n"] * 1024
    print(f"  {used['n']:,} partitions written and read: {used['seconds']:.2f} s, "
          f"{per_fd:.2f} descriptors and {per_rss:.0f} KiB RSS per partition")
    assert opened["fds"] - opened["fds0"] < 16  # lazy: opening costs no per-partition descriptor
