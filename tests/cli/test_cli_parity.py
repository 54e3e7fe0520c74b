"""kcat/rpk parity of the command line (issue 20): start positions, format
strings, headers, null values, explicit partitions, several topics; run as
subprocesses on real logs."""
from __future__ import annotations

import asyncio
import json

import pytest

import unstoppable as us

from cliutil import bad, cli


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "log"


def _fill(logdir, name="t", counts=(5, 3), t0=1_700_000_000_000):
    """Partition p gets counts[p] records; record i of p has timestamp t0 + i*1000."""
    async def main():
        with us.Log(str(logdir)) as log:
            log.create_topic(name, partitions=len(counts))
            async with us.Producer(log, name) as p:
                for part, n in enumerate(counts):
                    for i in range(n):
                        await p.send(b"%s-%d-%d" % (name.encode(), part, i), key=b"k%d" % i,
                                     partition=part, timestamp=t0 + i * 1000)
    asyncio.run(main())


def _offsets(*args, log):
    out = cli("consume", *args, "--json", log=log).stdout.splitlines()
    return sorted((r["partition"], r["offset"]) for r in map(json.loads, out))


def test_consume_start_positions(logdir):
    _fill(logdir)
    assert _offsets("t", "-o", "beginning", log=logdir) == [(0, i) for i in range(5)] + [(1, i) for i in range(3)]
    assert _offsets("t", "-o", "end", log=logdir) == []
    assert _offsets("t", "-o", "3", log=logdir) == [(0, 3), (0, 4)]
    assert _offsets("t", "-o", "-2", log=logdir) == [(0, 3), (0, 4), (1, 1), (1, 2)]
    assert _offsets("t", "-o", "+2", log=logdir) == [(0, 2), (0, 3), (0, 4), (1, 2)]
    assert _offsets("t", "-o", "@1700000003000", log=logdir) == [(0, 3), (0, 4)]
    assert _offsets("t", "-o", "@2023-11-14T22:13:22Z", log=logdir) == [(0, 2), (0, 3), (0, 4), (1, 2)]
    assert _offsets("t", "-o", "end", "-o", "1:1", log=logdir) == [(1, 1), (1, 2)]
    assert _offsets("t", "-o", "0:-1", log=logdir) == [(0, 4)] + [(1, i) for i in range(3)]
    assert _offsets("t", "--group", "g", "-o", "-1", log=logdir) == [(0, 4), (1, 2)]
    assert "want beginning, end" in bad("consume", "t", "-o", "middle", log=logdir, code=2)
    assert "not an ISO-8601 time" in bad("consume", "t", "-o", "@yesterday", log=logdir, code=2)


def test_format_string(logdir):
    _fill(logdir, counts=(2,))
    r = cli("consume", "t", "-F", "%t %p:%o %T %k=%s (%K,%S) [%h]\\n", log=logdir)
    assert r.stdout.splitlines() == ["t 0:0 1700000000000 k0=t-0-0 (2,5) []",
                                     "t 0:1 1700000001000 k1=t-0-1 (2,5) []"]
    assert "unknown format code %q" in bad("consume", "t", "-F", "%q", log=logdir, code=2)


def test_produce_headers_tombstones_partition(logdir):
    cli("topics", "create", "t", "--partitions", "3", log=logdir)
    cli("produce", "t", "-H", "trace=1", "-H", "src=cli", "-p", "2", "-Z", "--key-separator", ":",
        stdin="a:1\nb:\n:3\n", log=logdir)
    recs = [json.loads(x) for x in cli("consume", "t", "--json", log=logdir).stdout.splitlines()]
    assert [(r["partition"], r["key"], r["value"]) for r in recs] == [(2, "a", "1"), (2, "b", None),
                                                                       (2, None, "3")]
    assert all(r["headers"] == {"trace": "1", "src": "cli"} for r in recs)
    out = cli("consume", "t", "-F", "%k:%S:%h\\n", log=logdir).stdout.splitlines()
    assert out == ["a:1:trace=1,src=cli", "b:-1:trace=1,src=cli", ":1:trace=1,src=cli"]
    assert "KEY=VALUE" in bad("produce", "t", "-H", "novalue", stdin="x\n", log=logdir, code=2)


def test_several_topics_and_a_regex(logdir):
    _fill(logdir, "orders.eu", counts=(2,))
    _fill(logdir, "orders.us", counts=(1,))
    _fill(logdir, "users", counts=(1,))
    lines = cli("consume", "orders.eu", "users", log=logdir).stdout.splitlines()
    assert sorted(lines) == ["orders.eu/0/0\tk0\torders.eu-0-0", "orders.eu/0/1\tk1\torders.eu-0-1",
                             "users/0/0\tk0\tusers-0-0"]
    recs = [json.loads(x) for x in cli("consume", "-r", r"orders\..*", "--json", log=logdir).stdout.splitlines()]
    assert sorted((r["topic"], r["offset"]) for r in recs) == [("orders.eu", 0), ("orders.eu", 1),
                                                               ("orders.us", 0)]
    assert "no topic matches" in bad("consume", "-r", "nothing.*", log=logdir)
