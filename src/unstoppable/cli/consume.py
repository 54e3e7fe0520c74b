"""The ``consume`` and ``tail`` commands."""
from __future__ import annotations

import re
import sys

from unstoppable.cli._common import (
    _EXIT_USAGE,
    CLIError,
    _codec,
    _print_record,
    _progress,
    _run_on_log,
)

_OFFSET_HELP = ("where to start: beginning, end, N (offset N), -N (N before the end), +N (N after "
                "the start), @TIME (first record at or after an ISO-8601 time or ms since the epoch); "
                "P:SPEC for partition P only (repeatable). Default: the beginning, or a group's "
                "committed offsets")
_TO_HELP = ("where to stop, exclusive (as rpk's -o START:END and kcat's e@TIME): N (stop before "
            "offset N), end (the end when the command starts), -N (N before that end), @TIME (stop "
            "before the first record at or after an ISO-8601 time or ms since the epoch); P:SPEC for "
            "partition P only (repeatable). Past the end: stop at the end, or with -f wait for it. "
            "The progress bar's total counts up to it")


def _no_partition(option: str, item: str, topics: list, count: int) -> str:
    """The error for ``P:SPEC`` naming a partition no topic has."""
    names = f"topic {topics[0]!r} has" if len(topics) == 1 else \
        f"the topics {', '.join(map(repr, topics))} have"
    part, _, spec = item.partition(":")
    hint = f" (offsets {part} to {spec}: -o {part} --to {spec})" if option == "-o/--offset" and \
        spec.isdigit() and int(spec) > int(part) else ""
    return f"{option} {item}: {names} partitions 0 .. {count - 1}, not {part}{hint}"


def _cmd_consume(args, tail: bool = False) -> int:
    codec = _codec(args.codec) if args.codec else None
    if args.max_records is not None and args.max_records < 0:
        raise CLIError("-n must be >= 0", _EXIT_USAGE)
    if not tail and args.group is not None and args.partition is not None:
        raise CLIError("--partition cannot be used with --group (the group assigns them)", _EXIT_USAGE)
    render = None
    if getattr(args, "format_string", None) is not None:
        if args.json:
            raise CLIError("--format-string and --json cannot be combined", _EXIT_USAGE)
        from unstoppable.cli._format import compile_format
        try:
            render = compile_format(args.format_string)
        except ValueError as e:
            raise CLIError(str(e), _EXIT_USAGE) from None
    specs = _parse_offsets(getattr(args, "offset", None) or [])
    stops = {} if tail else _parse_to(args.to or [])
    if stops:
        _check_to(args, specs, stops)
    session = _Session(args, codec, tail, specs, render, stops)
    try:
        _run_on_log(args, session.run, writes=None if session.group is None else
                    f"consume as group {session.group!r} (it commits)")
    except KeyboardInterrupt:
        return 130
    finally:
        session.bar.close()
    return 0


_SPEC = re.compile(r"beginning|earliest|start|oldest|end|latest|newest|[-+]?\d+|@.+")


def _parse_offsets(items: list) -> dict:
    """``{partition or None: spec}`` from the -o/--offset values (None: every partition)."""
    return _parse_specs(items, _SPEC, "-o/--offset {!r}: want beginning, end, N, -N, +N, @TIME or P:SPEC")


def _parse_specs(items: list, pattern, wanted: str) -> dict:
    """``{partition or None: spec}`` from [P:]SPEC values, each checked against
    ``pattern`` (``wanted`` is the error, formatted with the value); @TIME
    becomes @milliseconds."""
    out: dict = {}
    for item in items:
        part, sep, spec = item.partition(":")
        if sep and part.isdigit() and not item.startswith("@"):
            key = int(part)
        else:
            key, spec = None, item
        if not pattern.fullmatch(spec):
            raise CLIError(wanted.format(item), _EXIT_USAGE)
        if spec.startswith("@"):
            spec = "@%d" % _time_ms(spec[1:])
        out[key] = spec
    return out


_TO_SPEC = re.compile(r"end|latest|newest|-?\d+|@.+")


def _parse_to(items: list) -> dict:
    """``{partition or None: spec}`` from the --to values (None: every partition)."""
    return _parse_specs(items, _TO_SPEC, "--to {!r}: want N (an offset, exclusive), end, "
                        "-N (N before the end), @TIME or P:SPEC")


def _check_to(args, specs: dict, stops: dict) -> None:
    """Refuse --to combinations that cannot mean anything, before the log is opened."""
    if args.follow and None in stops and all(not s.isdigit() and not s.startswith("@") for s in stops.values()):
        raise CLIError("--to end and --to -N stop at the end as it is when the command starts, so -f "
                       "would never wait: drop -f, or give --to an offset", _EXIT_USAGE)
    for key in sorted(set(specs) | set(stops), key=lambda k: -1 if k is None else k):
        start = specs.get(key, specs.get(None))
        to = stops.get(key, stops.get(None))
        if start is not None and to is not None and start.isdigit() and to.isdigit() and int(to) < int(start):
            where = "" if key is None else f" in partition {key}"
            raise CLIError(f"--to {to} is below --offset {start}{where}: --to is where reading stops "
                           "(exclusive)", _EXIT_USAGE)


def _time_ms(s: str) -> int:
    """Milliseconds since the epoch of ``s``: an int (ms) or an ISO-8601 time (naive = UTC)."""
    import datetime as dt
    if s.isdigit():
        return int(s)
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"@{s}: not an ISO-8601 time or milliseconds since the epoch", _EXIT_USAGE) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


def _resolve(spec: str, start: int, end: int) -> int | None:
    """The offset a spec names in a partition holding ``start .. end - 1``
    (clamped into that range); None for a time, looked up separately."""
    if spec in ("beginning", "earliest", "start", "oldest"):
        return start
    if spec in ("end", "latest", "newest"):
        return end
    if spec.startswith("@"):
        return None
    n = int(spec)
    if spec.startswith("-"):
        return max(start, end + n)
    if spec.startswith("+"):
        return min(end, start + n)
    return min(max(n, start), end)


def _resolve_to(spec: str | None, start: int, end: int, follow: bool) -> int | None:
    """The offset to stop before in a partition holding ``start .. end - 1``;
    None: no stop (-f without --to, or a time no record has reached yet)."""
    if spec is None or spec.startswith("@"):
        return None if follow else end
    if spec in ("end", "latest", "newest"):
        return end
    n = int(spec)
    if n < 0:
        return max(start, end + n)
    return n if follow else min(n, end)


class _Session:
    """One run of ``consume`` or ``tail`` on an open log."""

    def __init__(self, args, codec, tail: bool, specs: dict, render, stops: dict | None = None):
        self.args = args
        self.stops = stops or {}
        self.until: dict = {}      # --to @TIME with -f, not reached yet: {tp: ms}
        self.codec = codec
        self.tail = tail
        self.specs = specs
        self.render = render
        self.limit = args.max_records
        self.group = None if tail else args.group
        self.seen = 0
        self.bar = _progress(args, "consume")
        self.several = False

    async def _topics(self, admin) -> list[str]:
        names = self.args.topic
        if not getattr(self.args, "regex", False):
            return names
        try:
            patterns = [re.compile(p) for p in names]
        except re.error as e:
            raise CLIError(f"bad --regex pattern: {e}", _EXIT_USAGE) from None
        found = [t for t in await admin.list_topics() if any(p.fullmatch(t) for p in patterns)]
        if not found:
            raise CLIError(f"no topic matches {' or '.join(map(repr, names))}")
        return found

    async def _ranges(self, log) -> dict:
        """``{TopicPartition: (start, end)}`` of the partitions to read."""
        import unstoppable as us
        from unstoppable.admin import admin_for
        from unstoppable.client import TopicPartition
        admin = admin_for(log)
        try:
            topics = await self._topics(admin)
            ranges = {TopicPartition(t, p): r for t in topics
                      for p, r in enumerate(await admin.offset_ranges(t))}
        finally:
            await admin.close()
        self.several = len(topics) > 1
        count = 1 + max((tp.partition for tp in ranges), default=-1)
        for option, keys in (("-o/--offset", self.specs), ("--to", self.stops)):
            for k in keys:
                if k is not None and k >= count:
                    raise us.PartitionOutOfRangeError(_no_partition(option, f"{k}:{keys[k]}", topics, count))
        p = self.args.partition
        if p is None:
            return ranges
        picked = {tp: r for tp, r in ranges.items() if tp.partition == p}
        if not picked:
            raise us.PartitionOutOfRangeError(
                f"topic {topics[0]!r} has partitions 0 .. {len(ranges) - 1}, not {p}")
        return picked

    async def run(self, log) -> int:
        import unstoppable as us
        ranges = await self._ranges(log)
        topics = list(ranges) if self.group is None else sorted({tp.topic for tp in ranges})
        # A group without commits, and consume without one: from the start.
        async with us.Consumer(log, topics, group=self.group, auto_offset_reset="earliest") as c:
            if self.tail:
                return await self._tail(c, ranges)
            await self._seek(c, ranges)
            follow = self.args.follow
            stops = {tp: _resolve_to(self.stops.get(tp.partition, self.stops.get(None)), start, end, follow)
                     for tp, (start, end) in ranges.items()}
            await self._stop_times(c, ranges, stops)
            self._check_starts(c, stops)
            total = self.limit
            left = [stops[tp] - c.position(tp) for tp in c.assignment() if stops[tp] is not None]
            if len(left) == len(c.assignment()):
                bound = sum(max(n, 0) for n in left)
                total = bound if total is None else min(total, bound)
            self.bar.total = total
            return await self._consume(c, stops)

    async def _stop_times(self, c, ranges: dict, stops: dict) -> None:
        """Resolve --to @TIME: before the first record at or after the time;
        none yet: the end, or with -f the first such record to come."""
        times = {}
        for tp in ranges:
            spec = self.stops.get(tp.partition, self.stops.get(None))
            if spec is not None and spec.startswith("@"):
                times[tp] = int(spec[1:])
        found = await c.offsets_for_times(times) if times else {}
        self.until = {}
        for tp, ms in times.items():
            hit = found.get(tp)
            if hit is not None:
                stops[tp] = hit.offset
            elif self.args.follow:
                self.until[tp] = ms         # stops[tp] stays None until such a record comes
            else:
                stops[tp] = ranges[tp][1]

    def _check_starts(self, c, stops: dict) -> None:
        """--to below where an explicit -o puts a partition: a clear error, not an empty run."""
        for tp in sorted(c.assignment()):
            spec = self.specs.get(tp.partition, self.specs.get(None))
            stop, pos = stops[tp], c.position(tp)
            if spec is not None and stop is not None and pos > stop:
                to = self.stops.get(tp.partition, self.stops.get(None))
                raise CLIError(f"--to {to} (offset {stop}) is below where -o {spec} starts "
                               f"{tp.topic}/{tp.partition} (offset {pos})", _EXIT_USAGE)

    async def _seek(self, c, ranges: dict) -> None:
        """Move each assigned partition to where -o says."""
        times = {}
        for tp in c.assignment():
            spec = self.specs.get(tp.partition, self.specs.get(None))
            if spec is None:
                continue
            start, end = ranges[tp]
            off = _resolve(spec, start, end)
            if off is None:
                times[tp] = int(spec[1:])
            else:
                c.seek(tp, off)
        if times:
            found = await c.offsets_for_times(times)
            for tp in times:
                hit = found.get(tp)
                c.seek(tp, ranges[tp][1] if hit is None else hit.offset)

    def _print(self, tp, r) -> None:
        if self.render is not None:
            sys.stdout.buffer.write(self.render(tp.topic, r))
        elif self.several and not self.args.json:
            print(f"{tp.topic}/", end="")
            _print_record(self.args, tp.topic, r, self.codec)
        else:
            _print_record(self.args, tp.topic, r, self.codec)

    async def _consume(self, c, stops: dict) -> int:
        """Print records as they come, up to -n; stop each partition before
        its stop offset (--to, or without -f the end it had when the command
        started; None: follow it)."""
        limit, follow = self.limit, self.args.follow

        def live():
            return [tp for tp in c.assignment() if stops[tp] is None or c.position(tp) < stops[tp]]
        while True:
            todo = live()
            if not todo and (c.assignment() or not follow):
                return self.seen
            # Only the partitions not yet at their stop (a group member with
            # -f and no partitions waits for a rebalance to give it some).
            got = await c.getmany(*todo, timeout_ms=200 if follow else 0)
            if not got:
                continue
            printed = {}
            for tp, recs in got.items():
                stop, until = stops[tp], self.until.get(tp)
                for r in recs:
                    if until is not None and r.timestamp >= until:
                        stop = stops[tp] = r.offset       # --to @TIME reached
                        del self.until[tp]
                        until = None
                    if (limit is not None and self.seen >= limit) or (stop is not None and r.offset >= stop):
                        break
                    self._print(tp, r)
                    printed[tp] = r.offset + 1
                    self.seen += 1
            self.bar.update(self.seen)
            if self.render is not None:
                sys.stdout.flush()
            if self.group is not None and printed:
                await c.commit(printed)   # what was printed, not all that was fetched
            if limit is not None and self.seen >= limit:
                return self.seen

    async def _tail(self, c, ranges: dict) -> int:
        """The last -n (default 10) records by time, then (-f) new ones as they come."""
        keep = 10 if self.limit is None else self.limit
        for tp in c.assignment():
            start, end = ranges[tp]
            c.seek(tp, max(start, end - keep))
        recent = []
        while True:
            got = await c.getmany(timeout_ms=0)
            if not got:
                break
            for tp, recs in got.items():
                recent.extend((r.timestamp, tp, r) for r in recs)
        recent.sort(key=lambda x: (x[0], x[1].topic, x[1].partition, x[2].offset))
        for _, tp, r in (recent[-keep:] if keep else []):
            self._print(tp, r)
        while self.args.follow:
            got = await c.getmany(timeout_ms=200)
            for tp, recs in got.items():
                for r in recs:
                    self._print(tp, r)
                    self.seen += 1
        return self.seen


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    for name, helptext in (("consume", "print the records there are (-f: and then new ones; with a "
                                       "group: from its committed offsets)"),
                           ("tail", "the last records of a topic, then (-f) new ones")):
        c = sub.add_parser(name, parents=[withlog], help=helptext, description=helptext)
        if name == "consume":
            c.add_argument("topic", nargs="+", help="the topics to read (with --regex: patterns)")
        else:
            c.add_argument("topic", nargs=1, help="the topic to read")
        c.add_argument("-n", "--max-records", type=int, metavar="N",
                       help="stop after this many (tail: show this many; default 10)")
        c.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
        c.add_argument("--codec", help="decode values: bytes, str, json, booking, proto:module:Class")
        c.add_argument("--partition", type=int, metavar="P", help="only this partition")
        c.add_argument("--encoding", choices=("text", "base64"), default="text",
                       help="--json: keys, values and header values as text (UTF-8; other bytes as "
                            "\\xNN, default) or base64 (exact bytes; adds \"encoding\": \"base64\", "
                            "headers as [key, value] pairs)")
        c.add_argument("-F", "--format-string", metavar="FMT",
                       help="print each record with kcat's format codes: %%t topic, %%p partition, "
                            "%%o offset, %%T timestamp, %%k key, %%K key length, %%s value, "
                            "%%S value length, %%h headers, \\n newline (e.g. '%%p:%%o %%k=%%s\\n')")
        if name == "consume":
            c.add_argument("-r", "--regex", action="store_true",
                           help="the topic arguments are regular expressions matched against every topic")
            c.add_argument("--group", metavar="G", help="consume as this group and commit what was printed")
            c.add_argument("-o", "--offset", action="append", metavar="SPEC", help=_OFFSET_HELP)
            c.add_argument("--to", action="append", metavar="SPEC", help=_TO_HELP)
            c.set_defaults(func=_cmd_consume)
        else:
            c.set_defaults(func=lambda a: _cmd_consume(a, tail=True))
