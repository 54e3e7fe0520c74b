"""Regression tests for the command-line bugs of issue 20, each running the
CLI as a subprocess on a real log."""
from __future__ import annotations

import csv
import json

import pytest

import unstoppable as us

from cliutil import bad, cli


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
