"""The ``produce`` command: records from stdin."""
from __future__ import annotations

import asyncio
import json
import os
import sys

from unstoppable.cli._common import (
    _EXIT_USAGE,
    CLIError,
    _codec,
    _emit,
    _n,
    _progress,
    _run_on_log,
)


async def _stdin_lines(limit: int | None = None):
    """Lines of stdin (bytes, without the newline), read in chunks off the
    event loop so that the producer keeps writing while input trickles in.

    Linear in the input: each byte is searched for a newline once. A line
    longer than ``limit`` bytes is refused as soon as that many bytes of it
    have arrived (CLIError), without reading the rest of it."""
    buf = bytearray()
    n = 0
    async for chunk in _stdin_chunks():
        scan = len(buf)            # the bytes before hold no newline
        buf += chunk
        start = 0
        while (i := buf.find(b"\n", scan)) >= 0:
            n += 1
            _check_length(n, i - start, limit)
            yield bytes(buf[start:i])
            start = scan = i + 1
        del buf[:start]
        _check_length(n + 1, len(buf), limit)
    if buf:
        yield bytes(buf)


async def _stdin_chunks(ahead: int = 4):
    """Chunks of stdin from a reader thread of its own, at most ``ahead``
    chunks in advance. Not the loop's default executor: a read blocked on a
    terminal or an idle pipe must not keep Ctrl-C's clean-up (which waits for
    that executor) from finishing; this daemon thread is simply left behind."""
    import threading
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(ahead)
    fd = sys.stdin.fileno()

    def read():
        while True:
            room.acquire()
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError as e:
                chunk = e
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:
                return      # the loop is gone
            if not chunk or isinstance(chunk, OSError):
                return

    threading.Thread(target=read, name="unstoppable-stdin", daemon=True).start()
    while True:
        chunk = await chunks.get()
        if isinstance(chunk, OSError):
            raise chunk
        if not chunk:
            return
        room.release()
        yield chunk


def _check_length(n: int, length: int, limit: int | None) -> None:
    if limit is not None and length > limit:
        raise CLIError(f"line {n} is longer than {limit:,} bytes, the topic's max_record_bytes "
                       "(nothing of it was produced)")


def _stdin_size() -> int | None:
    """Bytes of stdin when it is a regular file (``< file``): the progress bar's total."""
    import stat
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _check_args(args, codec) -> None:
    from unstoppable.codecs import JsonCodec, ProtobufCodec
    if args.key is not None and (args.key_field or args.key_separator):
        raise CLIError("--key cannot be combined with --key-field or --key-separator", _EXIT_USAGE)
    if args.format == "lines" and args.key_field:
        raise CLIError("--key-field needs --format json", _EXIT_USAGE)
    if args.format == "json" and args.key_separator:
        raise CLIError("--key-separator needs --format lines", _EXIT_USAGE)
    if args.format == "lines" and isinstance(codec, (JsonCodec, ProtobufCodec)):
        raise CLIError(f"--codec {args.codec} needs --format json", _EXIT_USAGE)


class _RecordMaker:
    """``(key, value)`` of each input line, as the options say."""

    def __init__(self, args, codec):
        self.args = args
        self.codec = codec
        self.key = None if args.key is None else args.key.encode()
        self.sep = args.key_separator.encode() if args.key_separator else None

    def __call__(self, line: bytes, n: int):
        if self.args.format == "lines":
            if self.sep is not None:
                k, sep, v = line.partition(self.sep)
                if not sep:
                    raise CLIError(f"line {n}: no key separator {self.args.key_separator!r}")
                return k, v
            return self.key, line
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise CLIError(f"line {n}: not valid JSON ({e})") from None
        key = self.key
        if self.args.key_field:
            if not isinstance(obj, dict) or self.args.key_field not in obj:
                raise CLIError(f"line {n}: no field {self.args.key_field!r} for the key")
            key = str(obj[self.args.key_field]).encode()
        return self._encode(obj, key, n)

    def _encode(self, obj, key, n: int):
        from unstoppable.codecs import BytesCodec, JsonCodec, ProtobufCodec, StrCodec
        codec = self.codec
        if isinstance(codec, ProtobufCodec):
            try:
                msg = codec.from_json(obj)
            except ValueError as e:
                raise CLIError(f"line {n}: {e}") from None
            if key is None and "kind" in msg.DESCRIPTOR.oneofs_by_name:
                from unstoppable.booking.events import seat_of
                seat = seat_of(msg) if msg.DESCRIPTOR.full_name.endswith("BookingEvent") else ""
                key = seat.encode() if seat else None
            return key, codec.encode(msg)
        if isinstance(codec, (BytesCodec, StrCodec)):
            if not isinstance(obj, str):
                raise CLIError(f"line {n}: --codec {self.args.codec} wants JSON strings")
            return key, obj.encode()
        return key, JsonCodec().encode(obj)


async def _max_record_bytes(log, topic: str) -> int | None:
    from unstoppable.admin import admin_for
    admin = admin_for(log)
    try:
        return (await admin.describe_topic(topic)).config.get("max_record_bytes")
    finally:
        await admin.close()


def _headers(items: list) -> list | None:
    """``[(key, value bytes)]`` of the -H KEY=VALUE options."""
    out = []
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CLIError(f"-H/--header wants KEY=VALUE, got {item!r}", _EXIT_USAGE)
        out.append((k, v.encode()))
    return out or None


class _Producing:
    """One run of ``produce``: sends every line, counts what was acknowledged."""

    def __init__(self, args, make):
        self.args = args
        self.make = make
        self.counts: dict = {}
        self.total = 0
        self.headers = _headers(args.header or [])
        self.bar = _progress(args, "produce", _stdin_size())
        self.read = 0          # bytes of input taken so far

    async def run(self, log) -> None:
        import unstoppable as us
        args = self.args
        n = 0
        async with us.Producer(log, args.topic, acks=args.acks) as p:
            if args.partition is not None and not 0 <= args.partition < p.partitions:
                raise CLIError(f"topic {args.topic!r} has partitions 0 .. {p.partitions - 1}, "
                               f"not {args.partition}")
            futs: list = []
            try:
                async for line in _stdin_lines(await _max_record_bytes(log, args.topic)):
                    n += 1
                    self.read += len(line) + 1
                    if n % 1000 == 0:
                        self.bar.update(self.read, note=f"bytes, {_n(n, 'line')}")
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if not line.strip() and args.format == "json":
                        continue
                    key, value = self.make(line, n)
                    if args.null_empty:
                        key = key or None
                        value = value or None
                    futs.append(await p.send(value, key=key, headers=self.headers,
                                             partition=args.partition))
                    if len(futs) >= 10000:
                        await self._settle(p, futs)
            finally:
                await self._settle(p, futs)

    async def _settle(self, p, futs: list) -> None:
        await p.flush()
        for f in futs:
            e = f.exception()
            if e is not None:
                raise e
            md = f.result()
            self.counts[md.partition] = self.counts.get(md.partition, 0) + 1
            self.total += 1
        futs.clear()


def _cmd_produce(args) -> int:
    codec = _codec(args.codec) if args.codec else None
    _check_args(args, codec)
    run = _Producing(args, _RecordMaker(args, codec))
    try:
        _run_on_log(args, run.run, writes=f"produce to topic {args.topic!r}")
    except KeyboardInterrupt:
        run.bar.close()
        print(f"unstoppable: interrupted: {_n(run.total, 'record')} of {args.topic!r} acknowledged "
              "before it (records sent after the last acknowledgement may or may not be written)",
              file=sys.stderr)
        return 130
    except Exception as e:
        run.bar.close()
        if not run.total:
            raise
        code = e.code if isinstance(e, CLIError) else 1
        raise CLIError(f"{e} ({_n(run.total, 'record')} before it {'was' if run.total == 1 else 'were'} "
                       "produced)", code) from None
    run.bar.close()
    if args.json:
        _emit({"topic": args.topic, "records": run.total,
               "partitions": {str(k): v for k, v in sorted(run.counts.items())}})
    else:
        print(f"produced {_n(run.total, 'record')} to {args.topic!r}", file=sys.stderr)
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    pr = sub.add_parser("produce", parents=[withlog], help="append records read from stdin")
    pr.add_argument("topic", help="the topic to append to")
    pr.add_argument("--format", choices=("lines", "json"), default="lines",
                    help="lines: each line is a value; json: each line is a JSON document")
    pr.add_argument("--codec", help="encode JSON input: json (default), booking, "
                                    "proto:module:Class, str, bytes")
    pr.add_argument("--key", help="the key of every record")
    pr.add_argument("--key-field", help="(json) take the key from this field")
    pr.add_argument("--key-separator", help="(lines) split KEY<sep>VALUE at the first separator")
    pr.add_argument("-p", "--partition", type=int, metavar="P",
                    help="write every record to this partition (default: by key, or spread)")
    pr.add_argument("-H", "--header", action="append", metavar="KEY=VALUE",
                    help="add this header to every record (repeatable)")
    pr.add_argument("-Z", "--null-empty", action="store_true",
                    help="an empty value (or key) becomes null, as kcat -Z: an empty line is a tombstone")
    pr.add_argument("--acks", choices=("written", "fsync"), default="written",
                    help="written (default): acknowledged once written (survives a crash of this "
                         "process); fsync: once on disk (survives power loss)")
    pr.set_defaults(func=_cmd_produce)
