"""Regression tests for the command-line bugs of issue 20, each running the
CLI as a subprocess on a real log."""
from __future__ import annotations

import csv
import json

import pytest

import unstoppable as us

from cliutil import cli


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "log"


def test_csv_export_of_records_with_headers(logdir, tmp_path):
    """Bug 1: any record with headers made ``export --format csv`` fail with
    'string argument without an encoding'."""
    pytest.importorskip("pyarrow")
    with us.Log(str(logdir)) as log:
        p = log.create_topic("h", partitions=1).partition(0)
        p.append([(b"k1", b"v1", [("trace", b"1"), ("trace", b"\xff")]),
                  (b"k2", b"v2"),
                  (None, b"v3", [("dlq-error", b"boom")])])
    out = tmp_path / "h.csv"
    r = cli("export", "h", "--format", "csv", "--out", out, log=logdir)
    assert "exported 3 records" in r.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["value"] for row in rows] == ["v1", "v2", "v3"]
    assert [json.loads(row["headers"]) for row in rows] == [
        [["trace", "1"], ["trace", "\\xff"]], [], [["dlq-error", "boom"]]]


def _three_partitions(logdir, ends=(5, 6, 7)):
    with us.Log(str(logdir)) as log:
        t = log.create_topic("t", partitions=len(ends))
        for i, n in enumerate(ends):
            t.partition(i).append([b"p%d-%d" % (i, o) for o in range(n)])


def test_consume_offset_past_a_partitions_end_does_not_rewind(logdir):
    """Bug 2: ``consume --offset N`` past a partition's end printed that
    partition from 0 (and --offset 99 the whole topic)."""
    _three_partitions(logdir)
    out = cli("consume", "t", "--offset", "6", "--json", log=logdir).stdout.splitlines()
    assert [(r["partition"], r["offset"]) for r in map(json.loads, out)] == [(2, 6)]
    assert cli("consume", "t", "--offset", "99", log=logdir).stdout == ""
    out = cli("consume", "t", "--offset", "6", "--group", "g", "--json", log=logdir).stdout.splitlines()
    assert [(r["partition"], r["offset"]) for r in map(json.loads, out)] == [(2, 6)]
    assert cli("consume", "t", "--offset", "99", "--group", "g2", log=logdir).stdout == ""


def test_a_long_stdin_line_is_refused_once_it_passes_the_limit(logdir):
    """Bug 3: a long line was gathered with ``buf += chunk`` and re-split
    every 64 KiB (quadratic: a 200 MB line took 4 minutes) before being
    refused. Now it is refused as soon as it passes max_record_bytes: the CLI
    stops reading, so our writes hit a closed pipe long before the line ends."""
    import subprocess
    import sys
    cli("topics", "create", "t", "--config", "max_record_bytes=100000", log=logdir)
    cmd = [sys.executable, "-m", "unstoppable", "produce", "t", "--log", str(logdir)]
    chunk = b"x" * (1 << 16)
    written = 0
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, bufsize=0) as proc:
        proc.stdin.write(b"short line\n")
        try:
            while written < (1 << 30):           # a 1 GiB line, if it read it all
                proc.stdin.write(chunk)
                written += len(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 1
    assert written < (64 << 20), written         # stopped reading within the first MiBs
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "unstoppable: error: line 2 is longer than 100,000 bytes, the topic's max_record_bytes "
        "(nothing of it was produced) (1 record before it was produced)"]
    r = cli("consume", "t", log=logdir)
    assert r.stdout.splitlines() == ["0/0\t\tshort line"]


def test_tabs_and_backslashes_are_escaped_in_line_output(logdir, tmp_path):
    """Bug 4: a tab in a key or value went out raw in the tab-separated output
    of consume, tail and dump (key and value could not be told apart); a
    literal backslash looked like an escaped byte, in CSV too."""
    with us.Log(str(logdir)) as log:
        log.create_topic("t", partitions=1).partition(0).append([
            (b"k\tey", b"va\tl\nue", [("h\tk", b"h\tv")]),
            (b"plain", b"\\xff"),          # a literal backslash, x, f, f
            (b"plain", b"\xff")])          # one byte that is not UTF-8
    lines = cli("consume", "t", log=logdir).stdout.splitlines()
    assert [line.split("\t") for line in lines] == [
        ["0/0", "k\\tey", "va\\tl\\nue"], ["0/1", "plain", "\\\\xff"], ["0/2", "plain", "\\xff"]]
    assert cli("tail", "t", "-n", "3", log=logdir).stdout.splitlines() == lines
    for codec in ("bytes", "str"):
        assert cli("consume", "t", "--codec", codec, log=logdir).stdout.splitlines()[0].split("\t") == [
            "0/0", "k\\tey", "va\\tl\\nue"]
    dump = cli("dump", "t", log=logdir).stdout
    assert "key='k\\\\tey'  h\\tk=h\\tv  va\\tl\\nue" in dump and "\t" not in dump
    pytest.importorskip("pyarrow")
    out = tmp_path / "t.csv"
    cli("export", "t", "--format", "csv", "--out", out, log=logdir)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["key"], r["value"]) for r in rows] == [
        ("k\\tey", "va\\tl\\nue"), ("plain", "\\\\xff"), ("plain", "\\xff")]


def _processes() -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, state)}`` of every process."""
    import os
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(d)] = (int(fields[1]), fields[0])
    return out


def _descendants(pid: int) -> set[int]:
    """Live (not zombie) descendants of ``pid``."""
    procs = _processes()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, (parent, state) in procs.items():
            if parent == p and child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if procs[p][1] != "Z"}


def _alive(pids) -> set[int]:
    procs = _processes()
    return {p for p in pids if p in procs and procs[p][1] != "Z"}


def _start_demo_as_a_terminal_job(tmp_path):
    """``unstoppable demo`` started as a shell starts a job (its own process
    group); returns it and its descendants once the demo's worker processes run."""
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "unstoppable", "demo", "--dir", str(tmp_path / "d"),
                             "--seats", "300", "--users", "3000", "--window", "30", "--no-kill"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = _descendants(proc.pid)
        if len(kids) >= 6:       # 3 workers, 2 producers, a gateway (and the coordinator)
            time.sleep(1.0)      # let them get going
            return proc, _descendants(proc.pid)
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the demo did not start its processes within 60 s")


def test_ctrl_c_during_demo_prints_no_tracebacks(tmp_path):
    """Bug 5: Ctrl-C during ``demo`` printed about six tracebacks, one per
    child process. A terminal's Ctrl-C is SIGINT to the job's process group."""
    import os
    import signal
    import time
    proc, kids = _start_demo_as_a_terminal_job(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err.decode())
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
    deadline = time.monotonic() + 10
    while _alive(kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(kids) == set()                # no process left behind


def test_demo_cleans_up_when_the_command_is_sigkilled(tmp_path):
    """The coordinator runs in its own process group; when the command's
    process that started it dies by SIGKILL, it stops and takes its
    children with it instead of running on unseen."""
    import signal
    import time
    proc, kids = _start_demo_as_a_terminal_job(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(kids) == set()
