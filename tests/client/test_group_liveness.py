"""Consumer-group liveness (issue 18): members with different subscriptions
leave no partition without an owner; a member that stops heartbeating
(SIGSTOP) loses its partitions after the session timeout although its
process still holds its locks, and when it wakes its commits are refused
(FencedMemberError) and it hands out nothing from before the new owner's
commit; SIGKILL still fails over at once through the OS locks; lag() never
counts records retention deleted."""
import asyncio
import json
import os
import random
import signal
import time

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP
from unstoppable.client.embedded import EmbeddedBackend
from unstoppable.groups import MemberInfo, assign
from unstoppable.storage.groups import OffsetsFile
from unstoppable.storage.membership import Membership, owners

from client_util import SPAWN, run, wait_until

TOPICS = {"orders": 4, "audit": 4, "clicks": 3}
SUBSCRIPTIONS = [("orders",), ("orders", "audit"), ("audit",), ("clicks",), ("orders", "clicks"),
                 ("audit", "clicks", "orders")]


def _check_exactly_one_owner(targets: dict, subs: dict) -> None:
    """Every partition some member subscribes to has exactly one owner, a subscriber."""
    wanted = {(t, p) for s in subs.values() for t in s for p in range(TOPICS[t])}
    seen = {}
    for mid, tps in targets.items():
        for tp in tps:
            tp = tuple(tp)
            assert tp not in seen, f"{tp} owned by {seen[tp]} and {mid}"
            assert tp[0] in subs[mid], f"{mid} owns {tp} without subscribing to {tp[0]}"
            seen[tp] = mid
    assert set(seen) == wanted, f"without owner: {sorted(wanted - set(seen))}"


def test_mixed_subscriptions_assignment_over_random_member_ids():
    """The assignment itself, from identical inputs, over 500 seeded random
    groups: random member ids, random mixed subscriptions."""
    rng = random.Random(18)
    for _ in range(500):
        n = rng.randint(1, 7)
        ms = [MemberInfo("%016x" % rng.getrandbits(64), rng.choice(SUBSCRIPTIONS), 0, "", 0)
              for _ in range(n)]
        counts = {t: TOPICS[t] for m in ms for t in m.topics}
        a = assign(ms, counts)
        _check_exactly_one_owner(a, {m.member_id: m.topics for m in ms})
        assert a == assign(list(reversed(ms)), counts)


def test_mixed_subscriptions_members_agree_through_join_and_leave(tmp_path):
    """Members joined through the embedded backend (their own member files and
    locks; random member ids) each compute their target from their own view:
    after every join and leave, the targets cover every subscribed partition
    exactly once, and the owner locks they take agree. The issue's case is
    the first step: A on orders, B on orders and audit."""
    log = us.Log(tmp_path / "log")
    for t, n in TOPICS.items():
        log.create_topic(t, partitions=n)
    rng = random.Random(1801)

    async def main():
        backend = EmbeddedBackend(log)
        live = {}
        subs = {}

        async def settle():
            targets = {mid: await m.poll() for mid, m in live.items()}
            _check_exactly_one_owner(targets, subs)
            # Hand-over: release what is no longer ours, then take the rest.
            for mid, m in live.items():
                for tp in held[mid] - targets[mid]:
                    await m.release(tp)
                    held[mid].discard(tp)
            for mid, m in live.items():
                for tp in targets[mid]:
                    assert await m.try_acquire(tp), (mid, tp)
                    held[mid].add(tp)

        held = {}
        for step in range(40):
            if step == 0:
                plan = [("orders",), ("orders", "audit")]
            elif live and (len(live) >= 6 or rng.random() < 0.4):
                mid = rng.choice(sorted(live))
                for tp in list(held.pop(mid)):
                    await live[mid].release(tp)
                await live.pop(mid).leave()
                del subs[mid]
                plan = []
            else:
                plan = [rng.choice(SUBSCRIPTIONS)]
            for topics in plan:
                m = await backend.join_group("G", topics)
                live[m.member_id] = m
                subs[m.member_id] = tuple(topics)
                held[m.member_id] = set()
            if live:
                await settle()
                own = owners(log.path, "G")
                for mid in live:
                    for tp in held[mid]:
                        assert own[tuple(tp)] is True
        for mid, m in live.items():
            await m.leave()
        await backend.close()

    run(main())
    log.close()


# ---------------------------------------------------------------------------
# Real processes

def _mixed_worker(path, topics, outfile, stop_file):
    async def main():
        log = us.Log(path)
        async with us.Consumer(log, list(topics), group="G", membership_poll_ms=20) as c:
            got = []
            while not os.path.exists(stop_file):
                batch = await c.getmany(timeout_ms=50)
                for tp, recs in batch.items():
                    got.extend([tp.topic, tp.partition, r.offset] for r in recs)
                # What was read is on disk before it is committed: a SIGKILL
                # between the two redelivers it, never loses it from the record.
                with open(outfile + ".tmp", "w") as f:
                    json.dump({"assigned": sorted(c.assignment()), "got": got}, f)
                os.replace(outfile + ".tmp", outfile)
                if batch:
                    await c.commit()
        log.close()
    asyncio.run(main())


def test_mixed_subscriptions_across_processes_every_record_read(tmp_path):
    """The issue's setup in real processes (A on orders; B on orders and
    audit), then C (audit, clicks) joins and A is killed with SIGKILL: every
    record of every subscribed partition is read, and at each settled point
    every subscribed partition is assigned to exactly one process."""
    path = str(tmp_path / "log")
    log = us.Log(path)
    for t, n in TOPICS.items():
        log.create_topic(t, partitions=n)
    stop = str(tmp_path / "stop")
    outs = {w: str(tmp_path / f"{w}.json") for w in "ABC"}
    subs = {"A": ("orders",), "B": ("orders", "audit"), "C": ("audit", "clicks")}
    procs = {}

    def start(w):
        procs[w] = SPAWN.Process(target=_mixed_worker, args=(path, subs[w], outs[w], stop))
        procs[w].start()

    def state(w):
        try:
            with open(outs[w]) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def settled(ws):
        sts = {w: state(w) for w in ws}
        if any(s is None for s in sts.values()):
            return False
        try:
            _check_exactly_one_owner({w: sts[w]["assigned"] for w in ws}, {w: subs[w] for w in ws})
        except AssertionError:
            return False
        return True

    def append_round(k):
        for t, n in TOPICS.items():
            for p in range(n):
                log.topic(t).partition(p).append([b"%s-%d-%d" % (t.encode(), p, k)])

    try:
        start("A")
        start("B")
        append_round(0)
        assert wait_until(lambda: settled("AB"), timeout=60), {w: state(w) for w in "AB"}
        append_round(1)
        start("C")
        assert wait_until(lambda: settled("ABC"), timeout=60), {w: state(w) for w in "ABC"}
        append_round(2)
        os.kill(procs["A"].pid, signal.SIGKILL)
        procs["A"].join(10)
        t0 = time.monotonic()
        assert wait_until(lambda: settled("BC") and not state("B")["assigned"] == [], timeout=60)
        append_round(3)

        def all_read():
            got = set()
            for w in "ABC":
                s = state(w)
                if s:
                    got |= {(t, p, o) for t, p, o in s["got"]}
            want = {(t, p, o) for t, n in TOPICS.items() if t in ("orders", "audit", "clicks")
                    for p in range(n) for o in range(4)}
            # clicks is read only since C joined: all four rounds are there to read
            return want <= got

        assert wait_until(all_read, timeout=60)
        assert time.monotonic() - t0 < 60
    finally:
        open(stop, "w").close()
        for p in procs.values():
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        log.close()


# ---------------------------------------------------------------------------
# Session timeouts and fencing

def _stoppable_member(path, session_ms, ready, go, result):
    """Take every partition, hand out records (without committing), report
    ready; wait for ``go`` (SIGSTOP/SIGCONT happen meanwhile); then try to
    commit what it handed out, and report what it hands out next."""
    async def main():
        log = us.Log(path)
        c = us.Consumer(log, "t", group="G", membership_poll_ms=20, session_timeout_ms=session_ms)
        await c.start()
        handed = {}
        while len(handed) < 4:
            for tp, recs in (await c.getmany(timeout_ms=100)).items():
                handed[tp] = recs[-1].offset + 1
        with open(ready, "w") as f:
            json.dump(sorted(c.assignment()), f)
        while not os.path.exists(go):
            await asyncio.sleep(0.01)
        out = {"commit": None, "after": []}
        try:
            await c.commit(handed)
            out["commit"] = "ok"
        except us.FencedMemberError as e:
            out["commit"] = f"FencedMemberError: {e}"
        except us.CommitError as e:
            out["commit"] = f"CommitError: {e}"
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            for tp, recs in (await c.getmany(timeout_ms=100)).items():
                out["after"].extend([tp.partition, r.offset] for r in recs)
        with open(result, "w") as f:
            json.dump(out, f)
        await c.close()
        log.close()
    asyncio.run(main())


def test_a_stopped_member_loses_its_partitions_and_its_commits_are_fenced(tmp_path):
    """SIGSTOP a member holding all four partitions: a new member takes them
    over within the session timeout (the stopped process still holds its
    locks), consumes and commits. SIGCONT: the old member's commit of what it
    handed out before the stop raises FencedMemberError, nothing of it is
    stored (the committed offsets stay the new owner's), and it hands out no
    record below the new owner's commit."""
    path = str(tmp_path / "log")
    log = us.Log(path)
    log.create_topic("t", partitions=4)
    for p in range(4):
        log.topic("t").partition(p).append([b"r%d" % i for i in range(10)])
    session_ms = 1500
    ready, go, result = (str(tmp_path / n) for n in ("ready", "go", "result"))
    proc = SPAWN.Process(target=_stoppable_member, args=(path, session_ms, ready, go, result))
    proc.start()
    stopped = False
    try:
        assert wait_until(lambda: os.path.exists(ready), timeout=60)
        assert len(json.load(open(ready))) == 4
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = True
        t_stop = time.monotonic()

        async def new_owner():
            async with us.Consumer(log, "t", group="G", membership_poll_ms=20,
                                   session_timeout_ms=session_ms) as c:
                n = 0
                while len(c.assignment()) < 4:
                    for tp, recs in (await c.getmany(timeout_ms=20)).items():
                        n += len(recs)
                    assert time.monotonic() - t_stop < 30
                took = time.monotonic() - t_stop
                while n < 40:
                    for tp, recs in (await c.getmany(timeout_ms=100)).items():
                        n += len(recs)
                await c.commit()
                for p in range(4):
                    log.topic("t").partition(p).append([b"late"])
                return took, {tp.partition: await c.committed(tp) for tp in c.assignment()}

        took, committed = run(new_owner())
        # Within the session timeout plus the poll and the hand-over.
        assert session_ms / 1000 * 0.9 <= took < session_ms / 1000 + 3.0, took
        assert committed == {p: 10 for p in range(4)}
        assert all(owners(path, "G")[("t", p)] for p in range(4))  # the zombie still holds the flocks

        open(go, "w").close()
        os.kill(proc.pid, signal.SIGCONT)
        stopped = False
        proc.join(60)
        assert proc.exitcode == 0
        out = json.load(open(result))
        assert out["commit"].startswith("FencedMemberError"), out["commit"]
        f = OffsetsFile(path, "G")
        assert f.load() == {("t", p): 10 for p in range(4)}   # never moved back
        f.close()
        # After waking it hands out nothing the new owner had committed past.
        assert all(off >= 10 for _, off in out["after"]), out["after"]
        assert sorted(out["after"]) == [[p, 10] for p in range(4)]  # rejoined alone: the late ones
    finally:
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        if proc.is_alive():
            proc.kill()
            proc.join()
        log.close()


def _hold_member(path, ready):
    async def main():
        log = us.Log(path)
        async with us.Consumer(log, "t", group="G", membership_poll_ms=20,
                               session_timeout_ms=600_000) as c:
            while len(c.assignment()) < 4:
                await c.getmany(timeout_ms=20)
            open(ready, "w").close()
            await asyncio.sleep(600)
    asyncio.run(main())


def test_sigkill_fails_over_at_once_whatever_the_session_timeout(tmp_path):
    """With a 10-minute session timeout, a member killed with SIGKILL loses
    its partitions at once: the kernel drops its locks."""
    path = str(tmp_path / "log")
    log = us.Log(path)
    log.create_topic("t", partitions=4)
    ready = str(tmp_path / "ready")
    proc = SPAWN.Process(target=_hold_member, args=(path, ready))
    proc.start()
    try:
        assert wait_until(lambda: os.path.exists(ready), timeout=60)

        async def main():
            async with us.Consumer(log, "t", group="G", membership_poll_ms=20,
                                   session_timeout_ms=600_000) as c:
                await c.getmany(timeout_ms=200)
                assert c.assignment() == set()  # the live holder keeps them
                os.kill(proc.pid, signal.SIGKILL)
                t0 = time.monotonic()
                while len(c.assignment()) < 4:
                    await c.getmany(timeout_ms=20)
                return time.monotonic() - t0

        took = run(main())
        assert took < 5, took
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        log.close()


def test_membership_session_timeout_and_fence_in_one_process(tmp_path):
    """The storage layer alone: a member silent past the session timeout is
    counted out by the others though it holds its locks; its partition's
    record is taken over with a higher epoch; its commit raises
    FencedMemberError and writes nothing; on its next heartbeat it learns
    what it lost; a live owner's partition cannot be taken."""
    log = us.Log(tmp_path / "log")
    log.create_topic("t", partitions=2)
    path = log.path
    a = Membership(path, "g", ["t"], session_timeout_ms=300)
    b = Membership(path, "g", ["t"], session_timeout_ms=300)
    offsets = OffsetsFile(path, "g")
    try:
        assert a.try_acquire("t", 0)
        assert not b.try_acquire("t", 0)            # a is alive
        offsets.commit({("t", 0): 5}, fence=a.fence())
        with pytest.raises(us.FencedMemberError, match="does not own"):
            offsets.commit({("t", 1): 1}, fence=a.fence())
        with pytest.raises(ValueError, match="session_timeout_ms"):
            Membership(path, "g", ["t"], session_timeout_ms=0)
        epoch_a = a.epoch("t", 0)
        time.sleep(0.4)                              # a goes silent
        assert [m.member_id for m in b.refresh()] == [b.member_id]
        assert b.try_acquire("t", 0)                 # a still holds the flock
        assert b.epoch("t", 0) == epoch_a + 1
        offsets.commit({("t", 0): 7}, fence=b.fence())
        with pytest.raises(us.FencedMemberError, match="lost t/0") as ei:
            offsets.commit({("t", 0): 3}, fence=a.fence())
        assert ei.value.retriable is False and isinstance(ei.value, us.CommitError)
        assert offsets.load() == {("t", 0): 7}
        reader = OffsetsFile(path, "g")
        assert reader.load() == {("t", 0): 7}
        reader.close()
        members = a.refresh()                        # a wakes: heartbeats, sees its loss
        assert a.take_lost() == {("t", 0)} and a.owned() == set()
        assert len(members) == 2 and len(b.refresh()) == 2
        a.release("t", 0)                            # not ours: leaves b's record alone
        offsets.commit({("t", 0): 8}, fence=b.fence())
        assert not a.try_acquire("t", 0)             # b is alive and owns it
        b.release("t", 0)
        assert a.try_acquire("t", 0) and a.epoch("t", 0) == epoch_a + 2
    finally:
        a.leave()
        b.leave()
        offsets.close()
        log.close()


def test_lag_never_counts_records_retention_deleted(tmp_path):
    """The finding: a committed offset deleted by retention, auto_offset_reset
    "latest": lag() counted from the old commit (3,513 for a partition of
    294 records). It counts from the first offset still held."""
    log = us.Log(tmp_path / "log")
    log.create_topic("t", partitions=1, segment_bytes=4096, retention_bytes=8192)
    part = log.topic("t").partition(0)

    async def main():
        async with us.Consumer(log, "t", group="G") as c:
            await c.getmany(timeout_ms=0)
            part.append([b"x" * 100 for _ in range(5)])
            await c.getmany(timeout_ms=100)
            await c.commit()
            assert c.lag() == {TP("t", 0): 0}
        for i in range(300):
            part.append([b"y" * 100 for _ in range(10)])
        log.topic("t").enforce_retention()
        start, end = part.start_offset, part.end_offset
        assert start > 5 and end - start < 1000
        async with us.Consumer(log, "t", group="G", auto_offset_reset="latest") as c:
            await c.getmany(timeout_ms=0)
            assert await c.committed(TP("t", 0)) == 5
            assert c.position(TP("t", 0)) == end
            assert c.lag() == {TP("t", 0): end - start}

    run(main())
    log.close()
