"""The ``groups`` command: committed offsets and lag."""
from __future__ import annotations

import os

from unstoppable.cli._common import CLIError, _emit, _log_url, _run_admin


def _sqlite_rows(args) -> list:
    """``[(group, topic, partition, offset)]`` kept by a SQLiteOffsetStore in --sqlite."""
    import sqlite3
    if not os.path.exists(args.sqlite):
        raise CLIError(f"no database at {args.sqlite}")
    db = sqlite3.connect(f"file:{args.sqlite}?mode=ro", uri=True)
    try:
        got = db.execute(f"SELECT grp, topic, part, next_offset FROM {args.table}").fetchall()
    except sqlite3.Error as e:
        raise CLIError(f"{args.sqlite}: cannot read table {args.table!r}: {e}") from None
    finally:
        db.close()
    return [(g, t, p, off) for g, t, p, off in got if args.group is None or g == args.group]


async def _log_rows(args, admin) -> list:
    """``[(group, topic, partition, offset)]`` committed in the log itself."""
    groups = await admin.list_groups()
    if args.group is not None:
        if args.group not in groups:
            raise CLIError(f"no group {args.group!r} in {_log_url(args)}")
        groups = [args.group]
    rows = []
    for g in groups:
        for (t, p), off in sorted((await admin.committed_offsets(g)).items()):
            rows.append((g, t, p, off))
    return rows


async def _with_lag(admin, rows: list) -> list:
    """One dict per partition of every topic a group committed on (so the
    partitions it never committed show their whole backlog as lag)."""
    import unstoppable as us
    have = {(g, t, p): off for g, t, p, off in rows}
    ranges: dict = {}
    for t in sorted({t for _g, t, _p, _o in rows}):
        try:
            ranges[t] = await admin.offset_ranges(t)
        except us.UnknownTopicError:
            continue
    for g, t in {(g, t) for g, t, _p, _o in rows}:
        for p in range(len(ranges.get(t, ()))):
            have.setdefault((g, t, p), None)
    out = []
    for (g, t, p), off in sorted(have.items()):
        r = ranges.get(t)
        start, end = r[p] if r is not None and p < len(r) else (None, None)
        lag = None if end is None else max(end - (start if off is None else off), 0)
        out.append({"group": g, "topic": t, "partition": p, "committed": off,
                    "end_offset": end, "lag": lag})
    return out


def _cmd_groups(args) -> int:
    async def work(admin):
        rows = _sqlite_rows(args) if args.sqlite else await _log_rows(args, admin)
        return await _with_lag(admin, rows)
    out = _run_admin(args, work)
    if args.json:
        _emit(out)
        return 0
    if not out:
        print("no committed offsets")
        return 0
    wg = max(5, *(len(r["group"]) for r in out))
    wt = max(5, *(len(r["topic"]) for r in out))
    print(f"{'GROUP':<{wg}}  {'TOPIC':<{wt}}  PARTITION     COMMITTED    END OFFSET          LAG")
    for r in out:
        end = "?" if r["end_offset"] is None else f"{r['end_offset']:,}"
        lag = "?" if r["lag"] is None else f"{r['lag']:,}"
        com = "-" if r["committed"] is None else f"{r['committed']:,}"
        print(f"{r['group']:<{wg}}  {r['topic']:<{wt}}  {r['partition']:>9}  {com:>12}  "
              f"{end:>12}  {lag:>11}")
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    g = sub.add_parser("groups", parents=[withlog], help="committed offsets and lag per partition")
    g.add_argument("group", nargs="?")
    g.add_argument("--sqlite", metavar="DB", help="read offsets kept by a SQLiteOffsetStore in DB")
    g.add_argument("--table", default="unstoppable_offsets", help="its table (default: %(default)s)")
    g.set_defaults(func=_cmd_groups)
