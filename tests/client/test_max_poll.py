"""max_poll_interval_ms (issue 18): a group member whose event loop runs (so
it heartbeats) but whose application stops polling leaves the group after
the interval: its partitions go to the other member although its session
is alive, its commits for them fail with FencedMemberError with nothing
stored, and its next poll joins the group again."""
import asyncio
import json
import os
import time

import pytest

import unstoppable as us
from unstoppable.storage.groups import OffsetsFile

from client_util import SPAWN, run, wait_until

MAX_POLL_MS = 1000
SESSION_MS = 60_000  # far longer than the test: only max poll can move partitions


def _idle_member(path, ready, go, result):
    """Take all four partitions and hand out their records; then keep the
    loop running without polling until ``go``; then commit what was handed
    out, and poll again."""
    async def main():
        log = us.Log(path)
        c = us.Consumer(log, "t", group="G", membership_poll_ms=20,
                        session_timeout_ms=SESSION_MS, max_poll_interval_ms=MAX_POLL_MS)
        await c.start()
        handed = {}
        while len(handed) < 4:
            for tp, recs in (await c.getmany(timeout_ms=100)).items():
                handed[tp] = recs[-1].offset + 1
        with open(ready + ".tmp", "w") as f:
            json.dump(sorted(c.assignment()), f)
        os.rename(ready + ".tmp", ready)
        while not os.path.exists(go):   # the loop runs: heartbeats go on
            await asyncio.sleep(0.01)
        out = {"assignment_before": len(c.assignment())}
        try:
            await c.commit(handed)
            out["commit"] = "ok"
        except us.FencedMemberError as e:
            out["commit"] = f"FencedMemberError: {e}"
        revoked = []
        c._on_change = lambda a, r: revoked.extend(sorted(tp.partition for tp in r))
        t_end = time.monotonic() + 20
        while time.monotonic() < t_end and len(c.assignment()) != 2:
            await c.getmany(timeout_ms=50)
        out["revoked"] = revoked
        out["assignment_after"] = sorted(tp.partition for tp in c.assignment())
        await c.close()
        log.close()
        with open(result + ".tmp", "w") as f:
            json.dump(out, f)
        os.rename(result + ".tmp", result)
    asyncio.run(main())


def test_a_member_that_stops_polling_leaves_and_rejoins_on_its_next_poll(tmp_path):
    path = str(tmp_path / "log")
    log = us.Log(path)
    log.create_topic("t", partitions=4)
    for p in range(4):
        log.topic("t").partition(p).append([b"r%d" % i for i in range(10)])
    ready, go, result = (str(tmp_path / n) for n in ("ready", "go", "result"))
    proc = SPAWN.Process(target=_idle_member, args=(path, ready, go, result))
    proc.start()
    try:
        assert wait_until(lambda: os.path.exists(ready), timeout=60)
        assert len(json.load(open(ready))) == 4
        t_idle = time.monotonic()

        async def other():
            async with us.Consumer(log, "t", group="G", membership_poll_ms=20,
                                   session_timeout_ms=SESSION_MS) as c:
                n = 0
                while len(c.assignment()) < 4:
                    for tp, recs in (await c.getmany(timeout_ms=20)).items():
                        n += len(recs)
                    assert time.monotonic() - t_idle < 30, c.assignment()
                took = time.monotonic() - t_idle
                while n < 40:
                    for tp, recs in (await c.getmany(timeout_ms=100)).items():
                        n += len(recs)
                await c.commit()
                assert proc.is_alive()  # it left the group; its process lives on
                open(go, "w").close()
                # Its next poll rejoins: two partitions go back to it.
                while len(c.assignment()) != 2:
                    await c.getmany(timeout_ms=20)
                    assert time.monotonic() - t_idle < 60, c.assignment()
                while not os.path.exists(result):  # stay until it has said what it holds
                    await c.getmany(timeout_ms=20)
                    assert time.monotonic() - t_idle < 60
                return took

        took = run(other(), timeout=90)
        # After the interval (and a membership poll), long before the session timeout.
        assert MAX_POLL_MS / 1000 * 0.9 <= took < MAX_POLL_MS / 1000 + 5.0, took
        proc.join(60)
        assert proc.exitcode == 0
        out = json.load(open(result))
        assert out["commit"].startswith("FencedMemberError"), out["commit"]
        assert "max_poll_interval_ms" in out["commit"]
        assert out["revoked"] == [0, 1, 2, 3]          # reported lost at its next poll
        assert len(out["assignment_after"]) == 2
        f = OffsetsFile(path, "G")
        assert f.load() == {("t", p): 10 for p in range(4)}   # the other member's commits stand
        f.close()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        log.close()


def test_waiting_inside_getmany_counts_as_polling(tmp_path):
    """A member blocked in a long getmany (nothing to read) keeps its
    partitions past max_poll_interval_ms."""
    log = us.Log(tmp_path / "log")
    log.create_topic("t", partitions=2)

    async def main():
        async with us.Consumer(log, "t", group="G", membership_poll_ms=20,
                               max_poll_interval_ms=300) as c:
            assert len(c.assignment()) == 2
            assert await c.getmany(timeout_ms=1000) == {}
            assert len(c.assignment()) == 2 and c._member is not None
            await asyncio.sleep(0.6)          # not polling: it leaves
            assert c._member is None
            await c.getmany(timeout_ms=50)    # and rejoins
            assert c._member is not None and len(c.assignment()) == 2

    run(main())
    log.close()


def test_max_poll_interval_is_checked(tmp_path):
    log = us.Log(tmp_path / "log")
    log.create_topic("t")
    for bad in (0, 50, True, "1000"):
        with pytest.raises(ValueError, match="max_poll_interval_ms"):
            us.Consumer(log, "t", group="G", membership_poll_ms=100, max_poll_interval_ms=bad)
    us.Consumer(log, "t", group="G", max_poll_interval_ms=None)
    log.close()


def test_on_jetstream_a_member_that_stops_polling_leaves_and_rejoins(tmp_path):
    """The same rule on the JetStream backend (a real nats-server): the
    member that stops polling releases its leases, the other takes every
    partition long before the lease TTL, the idle one's commit is fenced,
    and its next poll rejoins."""
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "backends"))
    from nats_servers import server_binary, start_single, wait_for_jetstream
    if server_binary() is None:
        pytest.skip("the nats-server binary is not installed")
    server = start_single(str(tmp_path / "nats"))
    try:
        run(wait_for_jetstream([server.url]))

        async def main():
            log = await us.connect(server.url, lease_ttl=30.0)
            await log.create_topic("t", partitions=4)
            async with us.Producer(log, "t") as p:
                for i in range(40):
                    await p.send(b"%d" % i, partition=i % 4)
            idle = us.Consumer(log, "t", group="g", membership_poll_ms=50,
                               max_poll_interval_ms=800)
            await idle.start()
            handed = {}
            t0 = time.monotonic()
            while len(handed) < 4 and time.monotonic() - t0 < 20:
                for tp, recs in (await idle.getmany(timeout_ms=50)).items():
                    handed[tp] = recs[-1].offset + 1
            assert len(handed) == 4
            other = us.Consumer(log, "t", group="g", membership_poll_ms=50)
            await other.start()
            t_idle = time.monotonic()
            while len(other.assignment()) < 4:   # idle does not poll meanwhile
                await other.getmany(timeout_ms=50)
                assert time.monotonic() - t_idle < 20, other.assignment()
            took = time.monotonic() - t_idle
            with pytest.raises(us.FencedMemberError, match="max_poll_interval_ms"):
                await idle.commit(handed)
            while len(other.assignment()) != 2 or len(idle.assignment()) != 2:
                await idle.getmany(timeout_ms=20)
                await other.getmany(timeout_ms=20)
                assert time.monotonic() - t_idle < 40
            await idle.close()
            await other.close()
            await log.close()
            return took

        took = run(main(), timeout=90)
        assert took < 10, took   # the lease TTL is 30 s: max poll moved them
    finally:
        server.stop()
