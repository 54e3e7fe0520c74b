"""The ``export`` command: Parquet, Arrow IPC, CSV."""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys

from unstoppable.cli._common import (
    _EXIT_USAGE,
    CLIError,
    _codec,
    _emit,
    _n,
    _open_log,
    _printable,
    _progress,
    _text,
    _topic,
)


def _bound(s: str, what: str):
    """An export bound: an int offset, or an ISO-8601 time (naive = UTC)."""
    if s is None:
        return None, None
    try:
        return int(s), None
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise CLIError(f"--{what} {s!r} is neither an offset nor an ISO-8601 time", _EXIT_USAGE) from None
    return None, t


def _csv_ready(pa, batch):
    """CSV has no binary or list columns: keys and values become text
    (UTF-8, invalid bytes escaped as in ``_printable``), headers a JSON array
    of ``[key, value]`` pairs (a header key may repeat), decoded columns JSON."""
    cols, names = [], []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        t = col.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            col = pa.array([_printable(v) for v in col.to_pylist()], pa.string())
        elif pa.types.is_list(t) or pa.types.is_struct(t) or pa.types.is_map(t):
            col = pa.array([None if v is None else json.dumps(
                [[h["key"], _text(h["value"])] for h in v] if name == "headers" else v, default=_text)
                for v in col.to_pylist()], pa.string())
        cols.append(col)
        names.append(name)
    return pa.RecordBatch.from_arrays(cols, names=names)


def _total(t, start, end, parts, start_time, end_time) -> int | None:
    """Records an export of offsets ``start .. end`` will write (None when a
    time bound makes it unknown until read)."""
    if start_time is not None or end_time is not None:
        return None
    total = 0
    for p, (first, last) in enumerate(zip(t.start_offsets(), t.end_offsets(), strict=True)):
        if parts is None or p in parts:
            lo = first if start is None else max(first, start)
            hi = last if end is None else min(last, end)
            total += max(hi - lo, 0)
    return total


def _export_codec(args):
    """The Arrow value codec of ``--codec`` (None without one)."""
    from unstoppable import arrow as ua
    codec = None
    if args.codec:
        c = _codec(args.codec)
        from unstoppable.codecs import JsonCodec, ProtobufCodec
        if isinstance(c, ProtobufCodec):
            codec = ua.ProtobufCodec(c.message_class)
        elif isinstance(c, JsonCodec):
            raise CLIError("export --codec json needs a schema; use the Python API "
                           "(unstoppable.arrow.JsonCodec)", _EXIT_USAGE)
    if codec is None and args.on_error != "raise":
        raise CLIError("--on-error needs --codec (it says what to do with values that do not decode)",
                       _EXIT_USAGE)
    return codec


def _cmd_export(args) -> int:
    try:
        import pyarrow as pa
    except ImportError:
        raise CLIError("export needs pyarrow: pip install 'unstoppable[arrow]'") from None
    from unstoppable import arrow as ua
    start, start_time = _bound(args.from_, "from")
    end, end_time = _bound(args.to, "to")
    codec = _export_codec(args)
    parts = None
    if args.partitions:
        try:
            parts = [int(x) for x in args.partitions.split(",")]
        except ValueError:
            raise CLIError(f"--partitions wants numbers separated by commas, got {args.partitions!r}",
                           _EXIT_USAGE) from None
    out = args.out
    with _open_log(args) as log:
        t = _topic(log, args.topic)
        bad_rows: list = []
        kw = dict(start_time=start_time, end_time=end_time, codec=codec, keep_value=args.keep_value)
        if codec is not None:
            kw.update(on_error=args.on_error, bad_rows=bad_rows)
        bar = _progress(args, f"export {args.format}", _total(t, start, end, parts, start_time, end_time))
        rows = 0
        tmp = f"{out}.tmp{os.getpid()}"
        try:
            if args.format == "parquet":
                rows = ua.export_parquet(t, out, start, end, parts, **kw)
            else:
                reader = ua.to_batches(t, start, end, parts, **kw)
                if args.format == "arrow":
                    with pa.OSFile(tmp, "wb") as f, pa.ipc.new_file(f, reader.schema) as w:
                        for b in reader:
                            w.write_batch(b)
                            rows += b.num_rows
                            bar.update(rows + (len(bad_rows) if args.on_error == "skip" else 0))
                else:
                    import pyarrow.csv as pcsv
                    writer = None
                    with open(tmp, "wb") as f:
                        for b in reader:
                            b = _csv_ready(pa, b)
                            if writer is None:
                                writer = pcsv.CSVWriter(f, b.schema)
                            writer.write_batch(b)
                            rows += b.num_rows
                            bar.update(rows + (len(bad_rows) if args.on_error == "skip" else 0))
                        if writer is not None:
                            writer.close()
                        else:
                            f.write(b",".join(f'"{n}"'.encode() for n in reader.schema.names) + b"\n")
                os.replace(tmp, out)
        finally:
            bar.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
    if codec is not None and args.on_error != "raise":
        what = "skipped" if args.on_error == "skip" else "nulled the decoded columns of"
        print(f"{what} {_n(len(bad_rows), 'record')} whose value did not decode", file=sys.stderr)
    if args.json:
        _emit({"topic": args.topic, "format": args.format, "out": os.path.abspath(out), "rows": rows,
               **({"undecodable": len(bad_rows)} if codec is not None else {})})
    else:
        print(f"exported {_n(rows, 'record')} of {args.topic!r} to {out} ({args.format})")
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    e = sub.add_parser("export", parents=[withlog], help="a topic to Parquet, Arrow IPC or CSV")
    e.add_argument("topic", help="the topic to export")
    e.add_argument("--format", choices=("parquet", "arrow", "csv"), required=True,
                   help="parquet, arrow (an Arrow IPC file) or csv")
    e.add_argument("--out", required=True, metavar="PATH", help="the file to write (replaced atomically)")
    e.add_argument("--from", dest="from_", metavar="OFFSET|TIME",
                   help="first offset (every partition), or an ISO-8601 time")
    e.add_argument("--to", metavar="OFFSET|TIME", help="end offset (exclusive), or an ISO-8601 time")
    e.add_argument("--partitions", help="only these, e.g. 0,2")
    e.add_argument("--codec", help="decode values into columns: booking or proto:module:Class")
    e.add_argument("--keep-value", action="store_true", help="with --codec, keep the raw value column")
    e.add_argument("--on-error", choices=("raise", "skip", "null"), default="raise",
                   help="with --codec, a value that does not decode: raise (stop with an error "
                        "naming it; the default), skip (leave its row out) or null (keep the row, "
                        "decoded columns null); the count goes to stderr")
    e.set_defaults(func=_cmd_export)
