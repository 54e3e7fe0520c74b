"""How a consumer group of the embedded log forms: ``initial_rebalance_delay_ms``
(Kafka's ``group.initial.rebalance.delay.ms``) lets members started together
take their shares in one step, a member joining a formed group takes its
share at once, and a consumer kept busy by records sees a new member within
a poll or two rather than at half its session timeout."""
import asyncio
import json
import os
import time

import unstoppable as us

from client_util import SPAWN, make_log, run, wait_until


def test_members_started_together_take_their_shares_in_one_step(tmp_path):
    """Three members joining 150 ms apart with a 400 ms delay: nobody takes a
    partition before the last join + 400 ms, then each takes its share and
    none is ever revoked (no hand-over)."""
    log = make_log(tmp_path / "log", partitions=6)
    changes = {i: [] for i in range(3)}

    def on_change(i):
        return lambda a, r: changes[i].append((time.time(), len(a), len(r)))

    async def main():
        cs = []
        try:
            for i in range(3):
                if i:
                    await asyncio.sleep(0.15)
                last_start = time.time()
                c = us.Consumer(log, "t", group="g", membership_poll_ms=20,
                                initial_rebalance_delay_ms=400, on_assignment_change=on_change(i))
                await c.start()
                cs.append(c)
                assert c.assignment() == set()
            await asyncio.sleep(0.2)          # before the last join + 400 ms: still forming
            assert [c.assignment() for c in cs] == [set(), set(), set()]
            assert not any(changes.values())
            deadline = time.monotonic() + 10
            while any(len(c.assignment()) != 2 for c in cs) and time.monotonic() < deadline:
                await asyncio.gather(*(c.getmany(timeout_ms=20) for c in cs))
            assert [len(c.assignment()) for c in cs] == [2, 2, 2]
            assert set().union(*(c.assignment() for c in cs)) == {us.TopicPartition("t", p) for p in range(6)}
            for _ in range(10):               # and it stays so: no member rebalances after
                await asyncio.gather(*(c.getmany(timeout_ms=20) for c in cs))
            for i in range(3):
                assert [(a, r) for _, a, r in changes[i]] == [(2, 0)], changes[i]
                # (started_ms is whole ms: the join can read as up to 1 ms earlier)
                assert changes[i][0][0] >= last_start + 0.4 - 0.002
        finally:
            for c in cs:
                await c.close()

    run(main())
    log.close()


def test_a_member_joining_a_formed_group_takes_its_share_at_once(tmp_path):
    """The delay is for an empty group only: a member alone waits it out and
    takes everything; one joining later (with a 5 s delay of its own) gets
    its share at the first polls, not after 5 s."""
    log = make_log(tmp_path / "log", partitions=4)

    async def main():
        async with us.Consumer(log, "t", group="g", membership_poll_ms=20,
                               initial_rebalance_delay_ms=300) as c1:
            t0 = time.monotonic()
            assert c1.assignment() == set()
            while len(c1.assignment()) != 4:
                await c1.getmany(timeout_ms=20)
                assert time.monotonic() - t0 < 10
            assert time.monotonic() - t0 >= 0.25
            t1 = time.monotonic()
            async with us.Consumer(log, "t", group="g", membership_poll_ms=20,
                                   initial_rebalance_delay_ms=5000) as c2:
                while len(c2.assignment()) != 2:
                    await asyncio.gather(c1.getmany(timeout_ms=20), c2.getmany(timeout_ms=20))
                    assert time.monotonic() - t1 < 4, "the joining member waited out its delay"
                assert len(c1.assignment()) == 2

    run(main())
    log.close()


def _member_process(path, out, stop):
    """A second member in its own process: writes each assignment it gets."""
    async def main():
        log = us.Log(path)
        async with us.Consumer(log, "t", group="g", membership_poll_ms=20) as c:
            while not os.path.exists(stop):
                await c.getmany(timeout_ms=20, max_records=1)
                with open(out + ".tmp", "w") as f:
                    json.dump({"t": time.time(), "n": len(c.assignment())}, f)
                os.replace(out + ".tmp", out)
        log.close()
    asyncio.run(main())


def test_a_busy_consumer_hands_partitions_to_a_new_member_within_polls(tmp_path):
    """A consumer that always finds records never lets its event loop idle,
    so its membership task's sleep ends late; the check at the start of
    getmany sees the new member anyway and hands its share over within
    about a second (it took half the session timeout before: 15 s here)."""
    path = str(tmp_path / "log")
    log = make_log(path, partitions=4)
    t = log.topic("t")
    for p in range(4):
        t.partition(p).append([b"x" * 20] * 100_000)
    out, stop = str(tmp_path / "member.json"), str(tmp_path / "stop")

    async def main():
        async with us.Consumer(log, "t", group="g", membership_poll_ms=20,
                               session_timeout_ms=30_000) as c:
            assert len(c.assignment()) == 4
            proc = SPAWN.Process(target=_member_process, args=(path, out, stop))
            proc.start()
            try:
                joined = None
                deadline = time.monotonic() + 60
                while len(c.assignment()) != 2:
                    assert time.monotonic() < deadline, "the busy consumer never handed over"
                    got = await c.getmany(max_records=200)
                    assert got, "records are always available: the consumer stays busy"
                    time.sleep(0.01)              # work on them without yielding to the loop
                    if joined is None and os.path.exists(os.path.join(
                            path, "groups", "g", "members")) and len(os.listdir(
                            os.path.join(path, "groups", "g", "members"))) == 2:
                        joined = time.monotonic()
                handed = time.monotonic()
                assert joined is not None
                assert handed - joined < 3.0, f"hand-over took {handed - joined:.2f} s"
                assert wait_until(lambda: os.path.exists(out) and json.load(open(out))["n"] == 2, 30)
            finally:
                open(stop, "w").close()
                proc.join(30)
                if proc.is_alive():
                    proc.kill()

    run(main(), timeout=120)
    log.close()


def test_each_member_is_judged_by_its_own_session_timeout(tmp_path):
    """A member with a short session timeout does not count out one that
    chose a longer one and is silent for less than that (each member's
    timeout is its own, as in Kafka; it used to be judged by the observer's),
    and counts it out once its own timeout has passed."""
    from unstoppable.storage.membership import Membership

    path = str(tmp_path / "log")
    make_log(path, partitions=2).close()
    before_heartbeat = time.monotonic()       # patient's heartbeats all come after this
    patient = Membership(path, "g", ["t"], session_timeout_ms=1500)
    hasty = Membership(path, "g", ["t"], session_timeout_ms=300)
    try:
        assert patient.try_acquire("t", 0)
        t0 = time.monotonic()
        time.sleep(0.6)                       # patient is silent: past 300 ms, within 1,500
        live = hasty.refresh()
        if time.monotonic() - t0 < 1.4:       # (a stall of the test itself proves nothing)
            assert patient.member_id in [m.member_id for m in live]
            assert not hasty.try_acquire("t", 0)
        assert wait_until(lambda: patient.member_id not in [m.member_id for m in hasty.refresh()], 10)
        # Not before its own 1,500 ms: counted from before its first heartbeat,
        # less one tick of the kernel's coarse clock, which stamps the member
        # file's mtime (the heartbeat) up to a tick (4 ms at HZ=250) early.
        # (CI once saw 1.496 s counted from after try_acquire.)
        assert time.monotonic() - before_heartbeat >= 1.5 - 0.01
        assert hasty.try_acquire("t", 0)      # counted out at its own timeout: taken over
        assert [m.session_timeout_ms for m in sorted(hasty.refresh(), key=lambda m: m.member_id)] \
            == [300]
    finally:
        hasty.leave()
        patient.leave()
