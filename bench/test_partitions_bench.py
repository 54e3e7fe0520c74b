"""Many partitions (issue 18): open time and RSS of a log of 10,000
partitions (100 topics x 100), beside a same-run baseline (listing and
stat()ing the 10,000 partition directories, what an open that looked at
every partition would cost at least; a lazy open reads only topic.json), and
writing and reading every one of the 10,000 under ``ulimit -n 1024``: the
log keeps at most ``max_open_partitions`` (1024 / 8 = 128) open and lets the
least recently used idle ones go; the figures are the descriptors and RSS
that costs, and the time per partition beside the same run with no bound.

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
USED = TOPICS * PER_TOPIC  # partitions written and read

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
elif what in ("use", "use_unbounded"):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if what == "use":
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        log = us.Log(path)
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log = us.Log(path, max_open_partitions=1 << 20)
    topics = [log.topic(n) for n in log.topics()]
    pairs = [(t, i) for t in topics for i in range(t.partitions)][:%(used)d]
    most = 0
    for k, (t, i) in enumerate(pairs):
        t.partition(i).append([b"x" * 100])
        if k %% 500 == 0:
            most = max(most, fds())
    out["write_seconds"] = time.perf_counter() - t0
    assert all(len(t.partition(i).read(0)) >= 1 for t, i in pairs)
    out["n"] = len(pairs)
    out["most_fds"] = most
    out["bound"] = log.max_open_partitions
    out["parked"] = log._open_partitions.parked
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
    first = run(path, "use")              # creates each partition's files
    unbounded = run(path, "use_unbounded")
    used = run(path, "use")
    n = TOPICS * PER_TOPIC
    assert base["n"] == opened["n"] == n
    print(f"\n{n:,} partitions ({TOPICS} topics x {PER_TOPIC}):")
    print(f"  create:                    {created['seconds']:.2f} s")
    print(f"  open log + all topics:     {opened['seconds'] * 1000:.1f} ms, "
          f"RSS +{opened['rss'] - opened['rss0']:.1f} MiB, descriptors +{opened['fds'] - opened['fds0']}")
    print(f"  baseline (list + stat):    {base['seconds'] * 1000:.1f} ms "
          f"(open / baseline = {opened['seconds'] / base['seconds']:.2f})")
    print(f"  first use of all {first['n']:,} (creates their files, ulimit -n 1024): "
          f"{first['seconds']:.2f} s")
    for name, u in (("ulimit -n 1024, bounded", used),
                    ("the hard limit, no bound", unbounded)):
        per_rss = (u["rss"] - u["rss0"]) / u["n"] * 1024
        print(f"  {u['n']:,} partitions written and read ({name}, max_open_partitions="
              f"{u['bound']}): {u['seconds']:.2f} s ({u['seconds'] / u['n'] * 1e6:.0f} us each), "
              f"at most {u['most_fds']} descriptors, {u['fds'] - u['fds0']} at the end, "
              f"RSS +{u['rss'] - u['rss0']:.0f} MiB ({per_rss:.1f} KiB per partition), "
              f"{u['parked']:,} parked")
    print(f"  bounded / unbounded time: {used['seconds'] / unbounded['seconds']:.2f} "
          f"(the unbounded run lets partitions go too if it reaches the hard limit)")
    assert used["n"] == n and used["most_fds"] < 1024
    assert opened["fds"] - opened["fds0"] < 16  # lazy: opening costs no per-partition descriptor
