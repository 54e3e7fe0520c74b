"""Consumer groups: the assignment, membership through kernel-released locks,
rebalancing between members, and failover across real processes killed with
SIGKILL (no record skipped; handled-but-uncommitted records come again)."""
import asyncio
import collections
import os
import signal
import time

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP
from unstoppable.storage import groups
from unstoppable.storage.groups import MemberInfo, assign_round_robin, assign_sticky
from unstoppable.storage.membership import Membership, owners

from client_util import SPAWN, make_log, run, wait_until


def _m(i, topics=("t",)):
    return MemberInfo(f"m{i:03d}", tuple(topics), 0, "", 0)


def test_members_of_different_versions_agree_on_one_assignor(tmp_path):
    """Every member computes the assignment with the first assignor of the
    member with the smallest id that all live members can run; a member
    whose description names none (written before members named theirs) runs
    "sticky"; an assignor this version does not know is never chosen."""
    def m(i, assignors):
        return MemberInfo(f"m{i:03d}", ("t",), 0, "", 0, assignors)

    now = tuple(groups.ASSIGNORS)
    assert now[0] == "sticky" and "round-robin" in now
    assert groups.choose_assignor([m(1, now), m(2, now)]) == "sticky"
    # A newer member preferring something this version lacks: the common one.
    assert groups.choose_assignor([m(1, ("magic", "sticky")), m(2, now)]) == "sticky"
    # The leader (smallest id) prefers round-robin, everyone can: round-robin.
    ms = [m(1, ("round-robin", "sticky")), m(2, now), m(3, now)]
    assert groups.choose_assignor(ms) == "round-robin"
    assert groups.assign(ms, {"t": 9}) == assign_round_robin(ms, {"t": 9})
    # One member that can only run round-robin: everyone runs round-robin.
    ms = [m(1, now), m(2, ("round-robin",))]
    assert groups.assign(ms, {"t": 9}) == assign_round_robin(ms, {"t": 9}) != assign_sticky(ms, {"t": 9})
    # Descriptions as members publish them, old and new.
    new = groups.member_description(m(7, now))
    assert groups.parse_member_description(new, "x") == m(7, now)
    old = b'{"member_id": "m008", "topics": ["t"], "pid": 1, "host": "h", "started_ms": 5}'
    assert groups.parse_member_description(old, "x").assignors == ("sticky",)
    assert groups.parse_member_description(b"{not json", "m009") == MemberInfo("m009", (), 0, "", 0)
    # And through real member files: each member's target is its share of one assignment.
    log = make_log(tmp_path / "log", partitions=6)
    a = Membership(str(tmp_path / "log"), "g", ["t"])
    b = Membership(str(tmp_path / "log"), "g", ["t"])
    try:
        assert a.info.assignors == now
        members = a.refresh()
        assert [x.assignors for x in members] == [now, now]
        ta, tb = a.target(members, {"t": 6}), b.target(b.refresh(), {"t": 6})
        assert ta | tb == {("t", p) for p in range(6)} and not ta & tb
    finally:
        a.leave()
        b.leave()
        log.close()


@pytest.mark.parametrize("assign", [assign_round_robin, assign_sticky])
@pytest.mark.parametrize("members,parts", [(1, 8), (3, 8), (8, 8), (5, 3), (4, 17), (7, 100)])
def test_assignment_is_complete_exclusive_and_fair(assign, members, parts):
    ms = [_m(i) for i in range(members)]
    a = assign(ms, {"t": parts})
    owned = [tp for tps in a.values() for tp in tps]
    assert sorted(owned) == [("t", p) for p in range(parts)]        # each exactly once
    sizes = [len(v) for v in a.values()]
    assert max(sizes) - min(sizes) <= 1
    assert a == assign(list(reversed(ms)), {"t": parts})  # same from any view
    # Several topics: still each pair once, counts within one of each other.
    ms3 = [_m(i, ("t", "u", "v")) for i in range(members)]
    b = assign(ms3, {"t": parts, "u": 5, "v": 1})
    assert sorted(tp for tps in b.values() for tp in tps) == sorted(
        [("t", p) for p in range(parts)] + [("u", p) for p in range(5)] + [("v", 0)])
    sizes = [len(v) for v in b.values()]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("members,parts", [(3, 8), (4, 64), (8, 64), (7, 100)])
def test_sticky_assignment_moves_little_when_a_member_dies_or_joins(members, parts):
    """When a member dies only its own pairs must move, give or take a few
    for balance; round-robin dealing moves most of the survivors' pairs too."""
    ms = [_m(i) for i in range(members)]
    full = assign_sticky(ms, {"t": parts})
    owner = {tp: mid for mid, tps in full.items() for tp in tps}
    worst = 0
    for dead in ms:
        rest = assign_sticky([m for m in ms if m is not dead], {"t": parts})
        moved = sum(1 for mid, tps in rest.items() for tp in tps
                    if owner[tp] != mid and owner[tp] != dead.member_id)
        worst = max(worst, moved)  # (a member joining is the same change reversed)
    rr_full = assign_round_robin(ms, {"t": parts})
    rr_owner = {tp: mid for mid, tps in rr_full.items() for tp in tps}
    rr_rest = assign_round_robin(ms[1:], {"t": parts})
    rr_moved = sum(1 for mid, tps in rr_rest.items() for tp in tps
                   if rr_owner[tp] != mid and rr_owner[tp] != ms[0].member_id)
    # At most about one share more than the dead member's own.
    assert worst <= max(2, parts // members), (worst, parts, members)
    assert worst < rr_moved or rr_moved <= 2


def test_assignment_with_different_subscriptions():
    ms = [_m(0, ("a", "b")), _m(1, ("a",)), _m(2, ("b",))]
    a = assign_sticky(ms, {"a": 4, "b": 4})
    assert all(t in ("a", "b") for tps in a.values() for t, _ in tps)
    assert all(t == "a" for t, _ in a["m001"]) and all(t == "b" for t, _ in a["m002"])
    assert sorted(tp for tps in a.values() for tp in tps) == \
        [("a", p) for p in range(4)] + [("b", p) for p in range(4)]


def _hold_membership(path, ready_file):
    m = Membership(path, "g", ["t"])
    assert m.try_acquire("t", 0)
    open(ready_file, "w").close()
    time.sleep(600)


def test_a_member_killed_with_sigkill_drops_out_and_frees_its_partitions(tmp_path):
    path = str(tmp_path / "log")
    make_log(path, partitions=2).close()
    ready = str(tmp_path / "ready")
    proc = SPAWN.Process(target=_hold_membership, args=(path, ready))
    proc.start()
    try:
        assert wait_until(lambda: os.path.exists(ready), timeout=30)
        me = Membership(path, "g", ["t"])
        assert len(me.refresh()) == 2
        assert not me.try_acquire("t", 0)                 # held by the other process
        assert owners(path, "g")[("t", 0)] is True
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        live = me.refresh()
        assert [m.member_id for m in live] == [me.member_id]
        assert len(os.listdir(os.path.join(path, "groups", "g", "members"))) == 1
        assert me.try_acquire("t", 0)
        me.leave()
        assert os.listdir(os.path.join(path, "groups", "g", "members")) == []
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_two_members_in_one_process_split_and_rebalance(tmp_path):
    log = make_log(tmp_path / "log", partitions=8)
    t = log.topic("t")
    for i in range(800):
        t.partition(i % 8).append([b"%d" % i])
    seen = collections.Counter()
    changes = []

    async def drain(c, rounds):
        for _ in range(rounds):
            for tp, recs in (await c.getmany(timeout_ms=20, max_records=7)).items():
                for r in recs:
                    seen[(tp.partition, r.offset)] += 1
            await c.commit()

    async def main():
        opts = dict(group="g", membership_poll_ms=20,
                    on_assignment_change=lambda a, r: changes.append((len(a), len(r))))
        async with us.Consumer(log, "t", **opts) as c1:
            assert len(c1.assignment()) == 8
            await drain(c1, 3)
            async with us.Consumer(log, "t", **opts) as c2:
                for _ in range(100):
                    await asyncio.gather(drain(c1, 1), drain(c2, 1))
                    if len(c1.assignment()) == 4 and len(c2.assignment()) == 4:
                        break
                assert len(c1.assignment()) == 4 and len(c2.assignment()) == 4
                assert not (c1.assignment() & c2.assignment())
                while sum(seen.values()) < 800:
                    await asyncio.gather(drain(c1, 1), drain(c2, 1))
            # c2 left: c1 gets everything back.
            for _ in range(100):
                await drain(c1, 1)
                if len(c1.assignment()) == 8:
                    break
            assert len(c1.assignment()) == 8

    run(main())
    assert sorted(seen) == sorted((i % 8, i // 8) for i in range(800))
    assert max(seen.values()) == 1   # commits before every hand-over: nothing came twice
    assert (0, 4) in changes and (4, 0) in changes
    log.close()


# -- failover across processes

def _group_worker(path, wid, outdir, stop_file, die_after):
    """Consume in group "g"; log every handled record (H) and every commit (C)
    to a line-buffered file, so what was written survives a SIGKILL."""
    log = us.Log(path)
    out = open(os.path.join(outdir, f"w{wid}.txt"), "a", buffering=1)

    async def main():
        handled = 0
        async with us.Consumer(log, "t", group="g", membership_poll_ms=30) as c:
            while not os.path.exists(stop_file):
                got = await c.getmany(timeout_ms=30, max_records=40)
                for tp, recs in got.items():
                    for r in recs:
                        out.write(f"H {tp.partition} {r.offset} {time.monotonic():.6f}\n")
                        handled += 1
                        if die_after and handled >= die_after:
                            os.kill(os.getpid(), signal.SIGKILL)   # handled, never committed
                if got:
                    await asyncio.sleep(0.003)  # some work on the batch before committing it
                    for tp in got:              # what is about to be committed (may not finish)
                        out.write(f"A {tp.partition} {c.position(tp)}\n")
                    await c.commit()
                    for tp in got:
                        out.write(f"C {tp.partition} {c.position(tp)}\n")
    asyncio.run(main())
    out.close()
    log.close()


def _parse(outdir, wid):
    handled, commits = [], {}
    path = os.path.join(outdir, f"w{wid}.txt")
    if not os.path.exists(path):
        return handled, commits
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        parts = line.split()
        if parts[0] == "H" and len(parts) == 4:
            handled.append((int(parts[1]), int(parts[2]), float(parts[3])))
        elif parts[0] == "A" and len(parts) == 3:
            # The highest position committed or being committed: records below
            # it may count as committed, records at or above it certainly do not.
            commits[int(parts[1])] = max(commits.get(int(parts[1]), 0), int(parts[2]))
    return handled, commits


def test_group_failover_across_processes_killed_with_sigkill(tmp_path):
    path = str(tmp_path / "log")
    log = make_log(path, partitions=6)
    outdir = str(tmp_path / "out")
    os.makedirs(outdir)
    stop = str(tmp_path / "stop")
    # w0 survives; w1 is killed from outside; w2 kills itself right after
    # handling a record and before committing it.
    procs = {w: SPAWN.Process(target=_group_worker, args=(path, w, outdir, stop, d))
             for w, d in ((0, 0), (1, 0), (2, 700))}
    for p in procs.values():
        p.start()
    try:
        t = log.topic("t")
        n = 0
        deadline = time.monotonic() + 3.0
        killed_at = None
        while time.monotonic() < deadline:
            for p in range(6):
                t.partition(p).append([b"%d" % (n + j) for j in range(10)])
            n += 60
            if killed_at is None and time.monotonic() > deadline - 1.8 and \
                    _parse(outdir, 1)[0]:
                os.kill(procs[1].pid, signal.SIGKILL)
                killed_at = time.monotonic()
            time.sleep(0.01)
        assert killed_at is not None, "worker 1 never consumed anything"
        ends = [t.partition(p).end_offset for p in range(6)]

        def covered():
            got = set()
            for w in procs:
                got.update((p, o) for p, o, _ in _parse(outdir, w)[0])
            return all((p, o) in got for p in range(6) for o in range(ends[p]))

        assert wait_until(covered, timeout=30), "some records were never consumed"
        open(stop, "w").close()
        procs[0].join(15)
        assert procs[0].exitcode == 0
    finally:
        for p in procs.values():
            if p.is_alive():
                p.kill()
            p.join(5)
    assert procs[1].exitcode == -signal.SIGKILL and procs[2].exitcode == -signal.SIGKILL

    h = {w: _parse(outdir, w) for w in procs}
    # 1. No record skipped: every offset of every partition was handled.
    all_handled = {(p, o) for w in procs for p, o, _ in h[w][0]}
    assert all_handled == {(p, o) for p in range(6) for o in range(ends[p])}
    # 2. Whatever a dead worker handled after its last commit came again elsewhere.
    for dead in (1, 2):
        handled, commits = h[dead]
        assert handled
        uncommitted = [(p, o) for p, o, _ in handled if o >= commits.get(p, 0)]  # certainly
        others = {(p, o) for w in procs if w != dead for p, o, _ in h[w][0]}
        if dead == 2:
            assert uncommitted, "worker 2 died with nothing uncommitted"
        assert all(x in others for x in uncommitted), f"worker {dead}'s uncommitted records were lost"
    # The self-killed worker's very last record is among them.
    last = h[2][0][-1]
    assert (last[0], last[1]) in {(p, o) for p, o, _ in h[0][0] + h[1][0]}
    # 3. Failover is bounded: after the kill, each partition w1 was consuming is
    #    picked up by a survivor within a few seconds.
    w1_parts = {p for p, o, ts in h[1][0] if ts > killed_at - 0.3}
    for p in w1_parts:
        later = [ts for w in (0, 2) for pp, o, ts in h[w][0] if pp == p and ts > killed_at]
        assert later and min(later) - killed_at < 3.0, f"partition {p} was not taken over in time"
    log.close()


def test_async_for_members_rebalance_and_commit_on_revocation(tmp_path):
    """Two members stream with `async for` in separate tasks; the second joins
    mid-stream. Committing in on_assignment_change before a partition is
    given up means every record is handled exactly once."""
    log = make_log(tmp_path / "log", partitions=6)
    t = log.topic("t")
    total = 3000
    for i in range(total):
        t.partition(i % 6).append([b"%d" % i])
    seen = collections.Counter()
    by_member = collections.Counter()

    def member(name):
        c = us.Consumer(log, "t", group="g", membership_poll_ms=10, max_poll_records=20)

        async def on_change(assigned, revoked):
            if revoked:
                await c.commit({tp: c.position(tp) for tp in revoked})

        c._on_change = on_change

        async def consume():
            async for r in c:
                seen[(r.partition, r.offset)] += 1
                by_member[name] += 1
                await c.commit({TP(r.topic, r.partition): r.offset + 1})
                if r.offset % 50 == 0:
                    await asyncio.sleep(0.002)   # let the other member and the membership task run
        return c, consume

    async def main():
        ca, consume_a = member("a")
        cb, consume_b = member("b")
        await ca.start()
        ta = asyncio.ensure_future(consume_a())
        await asyncio.sleep(0.1)
        await cb.start()
        tb = asyncio.ensure_future(consume_b())
        for _ in range(3000):
            if sum(seen.values()) >= total:
                break
            await asyncio.sleep(0.01)
        await ca.close()
        await cb.close()
        await asyncio.wait_for(asyncio.gather(ta, tb), 5)

    run(main())
    assert sorted(seen) == sorted((i % 6, i // 6) for i in range(total))
    assert max(seen.values()) == 1
    assert by_member["a"] > 0 and by_member["b"] > 0
    log.close()


def test_a_group_over_two_topics(tmp_path):
    log = us.Log(tmp_path / "log")
    log.create_topic("a", partitions=3)
    log.create_topic("b", partitions=2)
    log.topic("a").partition(2).append([b"a2"])
    log.topic("b").partition(1).append([b"b1"])

    async def main():
        async with us.Consumer(log, ["a", "b"], group="g2") as c1, \
                us.Consumer(log, ["a", "b"], group="g2", membership_poll_ms=10) as c2:
            for _ in range(200):
                await c1.getmany(timeout_ms=5)
                await c2.getmany(timeout_ms=5)
                if len(c1.assignment()) + len(c2.assignment()) == 5 and c2.assignment():
                    break
            a1, a2 = c1.assignment(), c2.assignment()
        return a1, a2

    a1, a2 = run(main())
    assert not (a1 & a2)
    assert a1 | a2 == {TP("a", 0), TP("a", 1), TP("a", 2), TP("b", 0), TP("b", 1)}
    assert {len(a1), len(a2)} == {2, 3}
    log.close()


def test_group_without_commit_and_reset_error_refuses_to_guess(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    log.topic("t").partition(0).append([b"x", b"y"])

    async def main():
        async with us.Consumer(log, "t", group="strict", auto_offset_reset="error") as c:
            with pytest.raises(us.NoOffsetForPartitionError, match="seek"):
                await c.getmany()
            with pytest.raises(us.NoOffsetForPartitionError):
                c.position(TP("t", 0))
            c.seek(TP("t", 0), 1)
            got = await c.getmany()
            await c.commit()
        async with us.Consumer(log, "t", group="strict", auto_offset_reset="error") as c:
            return got, c.position(TP("t", 0))

    got, pos = run(main())
    assert [bytes(r.value) for r in got[TP("t", 0)]] == [b"y"]
    assert pos == 2
    log.close()
