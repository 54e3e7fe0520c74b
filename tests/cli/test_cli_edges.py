"""The command line's rough edges of issue 20: help on every option, plurals,
exit codes, unknown options, base64 JSON, progress totals, and what produce
says when interrupted; run as subprocesses on real logs."""
from __future__ import annotations

import argparse
import base64
import json
import signal
import subprocess
import sys
import time

import pytest

import unstoppable as us

from cliutil import bad, cli


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "log"


def test_every_option_of_every_command_has_help():
    from unstoppable.cli import _parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif action.help is None:
                yield f"{path}: {'/'.join(action.option_strings) or action.dest}"
    assert list(walk(_parser(), "unstoppable")) == []


def test_unknown_options_exit_codes_and_plurals(logdir):
    assert bad("--bogus", code=2) == ("unstoppable: error: unrecognized argument: --bogus "
                                      "(see 'unstoppable --help')")
    assert "a COMMAND is required" in bad(code=2)
    assert "-n must be >= 0" in bad("consume", "t", "-n", "-1", log=logdir, code=2)
    assert "want beginning, end" in bad("consume", "t", "-o", "x", log=logdir, code=2)
    assert "1 partition (" in cli("topics", "create", "t", log=logdir).stdout
    assert "produced 1 record to 't'" in cli("produce", "t", stdin="x\n", log=logdir).stderr
    assert "1 partition, 1 record" in cli("topics", "describe", "t", log=logdir).stdout
    hint = bad("demo", "--log", str(logdir), code=2)
    assert f"use --dir {logdir} (the log is then {logdir}/log)" in hint


def test_json_base64_keeps_exact_bytes(logdir):
    with us.Log(str(logdir)) as log:
        log.create_topic("t").partition(0).append([(b"\xff\x00", b"\\xff", [("h", b"\x80")])])
    text = json.loads(cli("consume", "t", "--json", log=logdir).stdout)
    b64 = json.loads(cli("consume", "t", "--json", "--encoding", "base64", log=logdir).stdout)
    assert b64["encoding"] == "base64" and "encoding" not in text
    assert base64.b64decode(b64["key"]) == b"\xff\x00" and base64.b64decode(b64["value"]) == b"\\xff"
    assert [(k, base64.b64decode(v)) for k, v in b64["headers"]] == [("h", b"\x80")]


def test_progress_bars_have_totals(logdir, tmp_path):
    cli("topics", "create", "t", "--partitions", "2", log=logdir)
    data = tmp_path / "in.txt"
    data.write_bytes(b"".join(b"line %d\n" % i for i in range(5000)))
    with open(data, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "unstoppable", "produce", "t", "--progress", "--log",
                            str(logdir)], stdin=f, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"/{data.stat().st_size:,} bytes" in r.stderr, r.stderr
    r = cli("consume", "t", "-n", "100", "--progress", log=logdir)
    assert "100/100" in r.stderr
    r = cli("consume", "t", "--progress", log=logdir)
    assert "5,000/5,000" in r.stderr
    pytest.importorskip("pyarrow")
    r = cli("export", "t", "--format", "csv", "--out", tmp_path / "t.csv", "--from", "1000",
            "--progress", log=logdir)
    assert "exported 3,000 records" in r.stdout and "3,000/3,000" in r.stderr


def test_produce_says_what_it_wrote_when_interrupted(logdir):
    cli("topics", "create", "t", log=logdir)
    cmd = [sys.executable, "-m", "unstoppable", "produce", "t", "--log", str(logdir)]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0) as proc:
        proc.stdin.write(b"".join(b"r%d\n" % i for i in range(20000)))
        deadline = time.monotonic() + 30
        with us.Log(str(logdir)) as log:     # wait until some are written, stdin still open
            while log.topic("t").partition(0).end_offset < 10000 and time.monotonic() < deadline:
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read().decode()
        assert proc.wait(30) == 130
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("unstoppable: interrupted: ") and "records of 't' acknowledged" in line
    acked = int(line.split()[2].replace(",", ""))
    with us.Log(str(logdir)) as log:
        assert log.topic("t").partition(0).end_offset >= acked >= 10000
