"""The ``dump`` command: batches, CRCs and records."""
from __future__ import annotations

from unstoppable.cli._common import (
    _EXIT_USAGE,
    CLIError,
    _codec,
    _emit,
    _iso,
    _open_log,
    _printable,
    _progress,
    _record_dict,
    _show_value,
    _topic,
)


def _cmd_dump(args) -> int:
    codec = _codec(args.codec) if args.codec else None
    if args.max_records is not None and args.max_records < 0:
        raise CLIError("-n must be >= 0", _EXIT_USAGE)
    with _open_log(args) as log, _progress(args, "dump") as bar:
        t = _topic(log, args.topic)
        if args.partition is not None and not 0 <= args.partition < t.partitions:
            raise CLIError(f"topic {args.topic!r} has partitions 0 .. {t.partitions - 1}, not {args.partition}")
        parts = [args.partition] if args.partition is not None else list(range(t.partitions))
        starts = {}
        for pi in parts:
            part = t.partition(pi)
            off = part.start_offset if args.offset is None else max(args.offset, part.start_offset)
            if off > part.end_offset:
                raise CLIError(f"offset {off} is past the end of {args.topic}/{pi} ({part.end_offset})")
            starts[pi] = off
        total = sum(t.partition(pi).end_offset - off for pi, off in starts.items())
        bar.total = total if args.max_records is None else min(total, args.max_records)
        shown = 0
        for pi in parts:
            part = t.partition(pi)
            off = starts[pi]
            while off < part.end_offset:
                if args.max_records is not None and shown >= args.max_records:
                    return 0
                batches = part.read_batches(off, 1 << 20)
                if not batches:
                    break
                for b in batches:
                    info = {"partition": pi, "base_offset": b.base_offset, "last_offset": b.last_offset,
                            "records": b.record_count, "bytes": b.length, "crc": f"0x{b.crc:08x}",
                            "magic": b.magic, "attributes": b.attributes,
                            "first_timestamp": b.first_timestamp, "max_timestamp": b.max_timestamp,
                            "producer_id": b.producer_id, "producer_epoch": b.producer_epoch,
                            "base_sequence": b.base_sequence}
                    recs = b.records(off)
                    if args.max_records is not None:
                        recs = recs[:max(args.max_records - shown, 0)]
                    if args.json:
                        info["records_decoded"] = [_record_dict(args.topic, r, codec) for r in recs]
                        _emit(info)
                    else:
                        pid = "" if b.producer_id < 0 else (f" producer={b.producer_id} epoch="
                                                           f"{b.producer_epoch} seq={b.base_sequence}")
                        print(f"batch {pi}/{b.base_offset}..{b.last_offset}  records={b.record_count} "
                              f"bytes={b.length} crc=0x{b.crc:08x} (ok) "
                              f"time={_iso(b.first_timestamp)}{pid}")
                        for r in recs:
                            hs = " ".join(f"{_printable(k.encode())}={_printable(v)}" for k, v in r.headers)
                            key = _printable(r.key)
                            print(f"  {r.offset}  {_iso(r.timestamp)}  key={key!r}"
                                  f"{'  ' + hs if hs else ''}  {_show_value(codec, r.value, False)}")
                    shown += len(recs)
                    bar.update(shown)
                    off = b.next_offset
                    if args.max_records is not None and shown >= args.max_records:
                        return 0
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    du = sub.add_parser("dump", parents=[withlog], help="batches, CRCs and decoded records")
    du.add_argument("topic", help="the topic to dump")
    du.add_argument("--partition", type=int, metavar="P", help="only this partition")
    du.add_argument("--offset", type=int, help="start at this offset")
    du.add_argument("-n", "--max-records", type=int, metavar="N", help="stop after this many records")
    du.add_argument("--codec", help="decode values: bytes, str, json, booking, proto:module:Class")
    du.set_defaults(func=_cmd_dump)
