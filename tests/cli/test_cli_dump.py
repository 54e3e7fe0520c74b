"""``dump``: a progress bar with its total (issue 20), on compressed and
plain batches; run as subprocesses on real logs."""
from __future__ import annotations

import pytest

import unstoppable as us

from cliutil import bad, cli


@pytest.fixture
def logdir(tmp_path):
    log = tmp_path / "log"
    with us.Log(str(log)) as lg:   # partition 0: offsets 0..4 in two batches (one zstd), 1: 0..2
        t = lg.create_topic("t", partitions=2)
        t.partition(0).append([b"a%d" % i for i in range(3)], compression="zstd")
        t.partition(0).append([b"a3", b"a4"])
        t.partition(1).append([b"b%d" % i for i in range(3)])
    return log


def test_dump_shows_a_progress_bar_with_its_total(logdir):
    r = cli("dump", "t", "--progress", log=logdir)
    assert "dump [" in r.stderr and "8/8" in r.stderr, r.stderr
    assert r.stdout.count("batch ") == 3 and "  2  " in r.stdout and "a2" in r.stdout
    assert "4/4" in cli("dump", "t", "-n", "4", "--progress", log=logdir).stderr
    assert "2/2" in cli("dump", "t", "--partition", "1", "--offset", "1", "--progress", log=logdir).stderr
    assert "dump" not in cli("dump", "t", log=logdir).stderr      # not a terminal, not forced: no bar


def test_dump_refuses_bad_numbers_with_one_line(logdir):
    assert "-n must be >= 0" in bad("dump", "t", "-n", "-1", log=logdir, code=2)
    assert "partitions 0 .. 1, not 7" in bad("dump", "t", "--partition", "7", log=logdir)
    assert "offset 9 is past the end of t/1 (3)" in bad("dump", "t", "--partition", "1", "--offset", "9",
                                                        log=logdir)
