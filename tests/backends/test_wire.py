"""The JetStream backend's protocol parser against nats-py's own, as the
reference: the same byte stream, cut into chunks at arbitrary places, must
produce the same messages and control operations in the same order. Messages
of the "raw" subscription come out of FastParser's fast path; everything else
must reach the client exactly as nats-py would deliver it."""
from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from unstoppable.backends.jetstream._wire import FastParser, frame, header_value, status_of

Parser = FastParser.__mro__[1]  # nats-py's Parser
RAW_SID, OTHER_SID = 7, 9


class Recorder:
    """Stands in for the nats-py client: records what a parser hands it."""

    def __init__(self, raw_is_fast: bool = False):
        self.events: list = []
        self.raw_is_fast = raw_is_fast

    async def _process_msg(self, sid, subject, reply, data, headers):
        if sid == RAW_SID and self.raw_is_fast:
            # In the real client this lands in the subscription's queue,
            # which nobody reads: the message would be lost.
            self.events.append(("missed", sid, bytes(subject), headers, data))
        elif sid == RAW_SID:  # compared with the fast path, which has no reply
            self.events.append(("msg", sid, bytes(subject), headers, data))
        else:
            self.events.append(("msg", sid, bytes(subject), bytes(reply), headers, data))

    async def _process_ping(self):
        self.events.append(("ping",))

    async def _process_pong(self):
        self.events.append(("pong",))

    async def _process_info(self, info):
        self.events.append(("info", info))

    async def _process_err(self, err):
        self.events.append(("err", err))


def _op(kind, sid, subject, reply, hdr, payload):
    if kind == "msg":
        if hdr is None:
            line = b"MSG %s %d %s%d\r\n" % (subject, sid, reply + b" " if reply else b"", len(payload))
            return line + payload + b"\r\n"
        line = b"HMSG %s %d %s%d %d\r\n" % (subject, sid, reply + b" " if reply else b"", len(hdr),
                                             len(hdr) + len(payload))
        return line + hdr + payload + b"\r\n"
    return {"ping": b"PING\r\n", "pong": b"PONG\r\n", "ok": b"+OK\r\n",
            "info": b"INFO " + json.dumps({"server_id": "x", "connect_urls": ["a:1"]}).encode() + b"\r\n",
            "err": b"-ERR 'some error'\r\n"}[kind]


ops = st.lists(st.tuples(
    st.sampled_from(["msg", "msg", "msg", "ping", "pong", "ok", "info", "err"]),
    st.sampled_from([RAW_SID, OTHER_SID]),
    st.sampled_from([b"_INBOX.abc.1", b"us.t.0.x"]),
    st.sampled_from([b"", b"_INBOX.r.2"]),
    st.one_of(st.none(), st.sampled_from([b"NATS/1.0\r\nA: b\r\n\r\n", b"NATS/1.0 204 EOB\r\n\r\n"])),
    st.binary(max_size=40)), min_size=1, max_size=30)


async def _feed(parser, data: bytes, cuts: list) -> None:
    pos = 0
    for c in sorted(set(cuts)) + [len(data)]:
        c = min(c, len(data))
        if c > pos:
            await parser.parse(data[pos:c])
            pos = c


@settings(max_examples=300, deadline=None)
@given(ops, st.lists(st.integers(min_value=0, max_value=2000), max_size=20))
def test_fast_parser_matches_nats_py(items, cuts):
    data = b"".join(_op(*it) for it in items)

    async def main():
        ref = Recorder()
        await _feed(Parser(ref), data, cuts)
        fast = Recorder(raw_is_fast=True)
        parser = FastParser(fast, {RAW_SID: lambda s, h, p: fast.events.append(("msg", RAW_SID, s, h, p))})
        await _feed(parser, data, cuts)
        return ref.events, fast.events

    ref, fast = asyncio.run(main())
    assert fast == ref
    assert sum(1 for it in items if it[0] == "msg") == sum(1 for e in ref if e[0] == "msg")


def test_frames_and_headers():
    assert frame(b"a.b", b"xy") == b"PUB a.b 2\r\nxy\r\n"
    assert frame(b"a.b", b"xy", b"r.1") == b"PUB a.b r.1 2\r\nxy\r\n"
    h = b"NATS/1.0\r\nK: v\r\n\r\n"
    assert frame(b"a", b"xy", b"", h) == b"HPUB a %d %d\r\n%sxy\r\n" % (len(h), len(h) + 2, h)
    assert status_of(b"NATS/1.0 503\r\n\r\n") == 503
    assert status_of(b"NATS/1.0 204 EOB\r\nNats-Last-Sequence: 3\r\n\r\n") == 204
    assert status_of(h) == 0 and status_of(None) == 0
    assert header_value(b"NATS/1.0\r\nNats-Sequence: 42\r\n\r\n", b"\r\nNats-Sequence: ") == b"42"
    assert header_value(h, b"\r\nMissing: ") is None
