"""Backend-neutral consumer-group assignment: who of a group's live members
consumes which partition. Every member computes the assignment from the same
set of member descriptions, on the embedded log (member files) and on
JetStream (leases) alike. No storage imports here.
"""
from __future__ import annotations

import json
from typing import Iterable, NamedTuple

from unstoppable._core.hashing import xxh64

__all__ = [
    "MemberInfo",
    "member_description",
    "parse_member_description",
    "ASSIGNORS",
    "assign",
    "assign_round_robin",
    "assign_sticky",
    "choose_assignor",
]


class MemberInfo(NamedTuple):
    """A live member as described by its member file (or lease)."""
    member_id: str
    topics: tuple
    pid: int
    host: str
    started_ms: int
    #: The assignment functions this member can run, by name, most preferred
    #: first. A description without them was written before members named
    #: theirs, when every member ran "sticky".
    assignors: tuple = ("sticky",)
    #: This member's own session timeout (ms), by which the others judge
    #: its heartbeat; 0 in a description written before members gave it
    #: (the others then judge it by their own).
    session_timeout_ms: int = 0


def member_description(info: MemberInfo) -> bytes:
    """The JSON a member publishes about itself (member file or lease value)."""
    d = {"member_id": info.member_id, "topics": list(info.topics),
         "pid": info.pid, "host": info.host, "started_ms": info.started_ms,
         "assignors": list(info.assignors)}
    if info.session_timeout_ms:
        d["session_timeout_ms"] = info.session_timeout_ms
    return json.dumps(d).encode()


def parse_member_description(raw, fallback_id: str) -> MemberInfo:
    """The MemberInfo in ``raw`` (see :func:`member_description`); one that
    cannot be read counts as a member subscribed to nothing."""
    try:
        d = json.loads(raw)
        a = d.get("assignors")
        return MemberInfo(str(d["member_id"]), tuple(d["topics"]), int(d["pid"]),
                          str(d.get("host", "")), int(d.get("started_ms", 0)),
                          tuple(str(x) for x in a) if a else ("sticky",),
                          int(d.get("session_timeout_ms", 0)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return MemberInfo(fallback_id, (), 0, "", 0)


def assign_round_robin(members: Iterable[MemberInfo], partitions: dict[str, int]) -> dict[str, list]:
    """The assignment members computed before ``assign_sticky`` (kept for
    comparison): the (topic, partition) pairs of all
    subscribed topics, sorted, dealt round-robin over the members sorted by id,
    skipping members not subscribed to a pair's topic. With identical
    subscriptions, member counts differ by at most one."""
    ms = sorted(members, key=lambda m: m.member_id)
    out: dict[str, list] = {m.member_id: [] for m in ms}
    if not ms:
        return out
    i = 0
    for topic in sorted(partitions):
        for p in range(partitions[topic]):
            for k in range(len(ms)):
                m = ms[(i + k) % len(ms)]
                if topic in m.topics:
                    out[m.member_id].append((topic, p))
                    i = (i + k + 1) % len(ms)
                    break
    return out


def _weight(member_id: str, topic: str, partition: int) -> int:
    return xxh64(b"%s\0%s\0%d" % (member_id.encode(), topic.encode(), partition))


def assign_sticky(members: Iterable[MemberInfo], partitions: dict[str, int]) -> dict[str, list]:
    """The assignment every member computes (the default): rendezvous hashing
    with bounded loads. Each (topic, partition) of the subscribed topics, in a
    fixed hashed order, goes to the subscribed member that ranks it highest
    (xxh64 of member id, topic and partition) among those with room. Room: with
    P pairs and M members, every member gets P // M and the first P % M to
    fill up one more, so with identical subscriptions counts differ by at most
    one, as round-robin dealing gives. What it adds: when a member joins or
    dies, few pairs move between the others (round-robin dealing shifts
    nearly all of them), so fewer consumers drop a partition and re-read it
    from its last commit. Members subscribed to different topics take what the
    others cannot (the least loaded subscribed member). A function of the set
    of live members alone: every member computes the same answer from its
    own view. The last answer is kept, as members ask again on every poll
    (1,000 partitions over 100 members take about 50 ms to compute)."""
    ms = sorted(members, key=lambda m: m.member_id)
    key = (tuple((m.member_id, tuple(m.topics)) for m in ms), tuple(sorted(partitions.items())))
    global _last_sticky
    hit = _last_sticky  # one read: another thread may replace it meanwhile
    if hit is not None and hit[0] == key:
        out = hit[1]
    else:
        out = _assign_sticky(ms, partitions)
        _last_sticky = (key, out)
    return {k: list(v) for k, v in out.items()}


_last_sticky: tuple | None = None


def _assign_sticky(ms: list, partitions: dict[str, int]) -> dict[str, list]:
    out: dict[str, list] = {m.member_id: [] for m in ms}
    if not ms:
        return out
    pairs = [(t, p) for t in sorted(partitions) for p in range(partitions[t])]
    pairs.sort(key=lambda tp: (xxh64(b"%s\0%d" % (tp[0].encode(), tp[1])), tp))
    base, extra = divmod(len(pairs), len(ms))
    counts = {m.member_id: 0 for m in ms}
    for topic, p in pairs:
        eligible = [m.member_id for m in ms if topic in m.topics]
        if not eligible:
            continue
        ranked = sorted(eligible, key=lambda mid: (-_weight(mid, topic, p), mid))
        pick = None
        for mid in ranked:
            c = counts[mid]
            if c < base or (c == base and extra > 0):
                pick = mid
                if c == base:
                    extra -= 1
                break
        if pick is None:  # different subscriptions: every subscriber is full
            pick = min(ranked, key=lambda mid: counts[mid])
        counts[pick] += 1
        out[pick].append((topic, p))
    for v in out.values():
        v.sort()
    return out


def assign(members: Iterable[MemberInfo], partitions: dict[str, int]) -> dict[str, list]:
    """The group's assignment, as every member computes it: with the first
    assignor of the member with the smallest id that every live member can
    run (:data:`ASSIGNORS` here). Members of different versions therefore
    agree on one function, and a version that adds a better one uses it only
    once every member has it; two members computing different functions would
    each leave partitions to the other, and nobody would read those."""
    ms = list(members)  # (each assignor sorts by member id itself)
    return ASSIGNORS[choose_assignor(ms)](ms, partitions)


def choose_assignor(members: list[MemberInfo]) -> str:
    """The name :func:`assign` uses for these members (see there)."""
    if members:
        leader = min(members, key=lambda m: m.member_id)
        for name in leader.assignors:
            if name in ASSIGNORS and all(name in m.assignors for m in members):
                return name
    return "sticky"  # nothing in common that this version knows: its default


#: Assignment functions by the name members advertise, most preferred first.
ASSIGNORS: dict = {"sticky": assign_sticky, "round-robin": assign_round_robin}
