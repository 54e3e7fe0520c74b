"""The ``consume`` and ``tail`` commands."""
from __future__ import annotations

from unstoppable.cli._common import (
    _EXIT_USAGE,
    CLIError,
    _codec,
    _print_record,
    _run_on_log,
)


def _cmd_consume(args, tail: bool = False) -> int:
    codec = _codec(args.codec) if args.codec else None
    if args.max_records is not None and args.max_records < 0:
        raise CLIError("-n must be >= 0", _EXIT_USAGE)
    if not tail and args.group is not None and args.partition is not None:
        raise CLIError("--partition cannot be used with --group (the group assigns them)", _EXIT_USAGE)
    session = _Session(args, codec, tail)
    try:
        _run_on_log(args, session.run)
    except KeyboardInterrupt:
        return 130
    return 0


class _Session:
    """One run of ``consume`` or ``tail`` on an open log."""

    def __init__(self, args, codec, tail: bool):
        self.args = args
        self.codec = codec
        self.tail = tail
        self.limit = args.max_records
        self.group = None if tail else args.group
        self.seen = 0

    async def _ranges(self, log) -> dict:
        """``{partition: (start, end)}`` of the partitions to read."""
        import unstoppable as us
        from unstoppable.admin import admin_for
        admin = admin_for(log)
        try:
            ranges = dict(enumerate(await admin.offset_ranges(self.args.topic)))
        finally:
            await admin.close()
        p = self.args.partition
        if p is None:
            return ranges
        if p not in ranges:
            raise us.PartitionOutOfRangeError(
                f"topic {self.args.topic!r} has partitions 0 .. {len(ranges) - 1}, not {p}")
        return {p: ranges[p]}

    async def run(self, log) -> int:
        import unstoppable as us
        from unstoppable.client import TopicPartition
        ranges = await self._ranges(log)
        if self.group is None:
            topics = [TopicPartition(self.args.topic, p) for p in ranges]
        else:
            topics = self.args.topic
        # A group without commits, and consume without one: from the start.
        async with us.Consumer(log, topics, group=self.group, auto_offset_reset="earliest") as c:
            if self.tail:
                return await self._tail(c, ranges)
            if self.args.offset is not None:
                for tp in c.assignment():
                    # Past a partition's end means "nothing yet", not "out of
                    # range, start over": clamp into [start, end].
                    start, end = ranges[tp.partition]
                    c.seek(tp, min(max(self.args.offset, start), end))
            return await self._consume(c, {p: end for p, (_, end) in ranges.items()})

    def _print(self, r) -> None:
        _print_record(self.args, self.args.topic, r, self.codec)

    async def _consume(self, c, ends: dict) -> int:
        """Print records as they come, up to -n; without -f, stop at the ends
        the partitions had when the command started."""
        limit, follow = self.limit, self.args.follow
        while True:
            got = await c.getmany(timeout_ms=200 if follow else 0)
            if not got:
                if not follow and all(c.position(tp) >= ends[tp.partition] for tp in c.assignment()):
                    return self.seen
                continue
            printed = {}
            for tp, recs in got.items():
                for r in recs:
                    if limit is not None and self.seen >= limit:
                        break
                    self._print(r)
                    printed[tp] = r.offset + 1
                    self.seen += 1
            if self.group is not None and printed:
                await c.commit(printed)   # what was printed, not all that was fetched
            if limit is not None and self.seen >= limit:
                return self.seen

    async def _tail(self, c, ranges: dict) -> int:
        """The last -n (default 10) records by time, then (-f) new ones as they come."""
        keep = 10 if self.limit is None else self.limit
        for tp in c.assignment():
            start, end = ranges[tp.partition]
            c.seek(tp, max(start, end - keep))
        recent = []
        while True:
            got = await c.getmany(timeout_ms=0)
            if not got:
                break
            for recs in got.values():
                recent.extend(recs)
        recent.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        for r in (recent[-keep:] if keep else []):
            self._print(r)
        while self.args.follow:
            got = await c.getmany(timeout_ms=200)
            for recs in got.values():
                for r in recs:
                    self._print(r)
                    self.seen += 1
        return self.seen


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    for name, helptext in (("consume", "print the records there are (-f: and then new ones; with a "
                                       "group: from its committed offsets)"),
                           ("tail", "the last records of a topic, then (-f) new ones")):
        c = sub.add_parser(name, parents=[withlog], help=helptext)
        c.add_argument("topic")
        c.add_argument("-n", "--max-records", type=int, help="stop after this many (tail: show this many)")
        c.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
        c.add_argument("--codec", help="decode values: bytes, str, json, booking, proto:module:Class")
        c.add_argument("--partition", type=int, help="only this partition")
        if name == "consume":
            c.add_argument("--group", help="consume as this group and commit what was printed")
            c.add_argument("--offset", type=int, help="start every partition at this offset")
            c.set_defaults(func=_cmd_consume)
        else:
            c.set_defaults(func=lambda a: _cmd_consume(a, tail=True))
