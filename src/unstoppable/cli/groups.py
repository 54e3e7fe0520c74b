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


async def _log_rows(args, admin, must_exist: bool = True) -> list:
    """``[(group, topic, partition, offset)]`` committed in the log itself."""
    groups = await admin.list_groups()
    if args.group is not None:
        if args.group not in groups and not must_exist:
            return []
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
    _print_offsets(out)
    return 0


def _print_offsets(out: list) -> None:
    if not out:
        print("no committed offsets")
        return
    wg = max(5, *(len(r["group"]) for r in out))
    wt = max(5, *(len(r["topic"]) for r in out))
    print(f"{'GROUP':<{wg}}  {'TOPIC':<{wt}}  PARTITION     COMMITTED    END OFFSET          LAG")
    for r in out:
        end = "?" if r["end_offset"] is None else f"{r['end_offset']:,}"
        lag = "?" if r["lag"] is None else f"{r['lag']:,}"
        com = "-" if r["committed"] is None else f"{r['committed']:,}"
        print(f"{r['group']:<{wg}}  {r['topic']:<{wt}}  {r['partition']:>9}  {com:>12}  "
              f"{end:>12}  {lag:>11}")


ACTIONS = ("describe", "reset-offsets", "delete")


def rewrite_argv(argv: list) -> list:
    """``groups describe ...`` -> the command ``groups describe`` (``groups
    GROUP`` stays the listing of one group, as before)."""
    for i, a in enumerate(argv[:-1]):
        if a == "groups":
            if argv[i + 1] in ACTIONS:
                return argv[:i] + [f"groups {argv[i + 1]}"] + argv[i + 2:]
            break
    return argv


def _cmd_describe(args) -> int:
    async def work(admin):
        if args.group not in await admin.list_groups():
            d = await admin.describe_group(args.group)
            if not d.members:
                raise CLIError(f"no group {args.group!r} in {_log_url(args)}")
        d = await admin.describe_group(args.group)
        rows = [(args.group, t, p, off) for (t, p), off in (await admin.committed_offsets(args.group)).items()]
        return d, await _with_lag(admin, rows)
    d, offsets = _run_admin(args, work)
    members = [{"member_id": m.member_id, "host": m.host, "pid": m.pid, "topics": list(m.topics),
                "assigned": [f"{t}/{p}" for t, p in d.assignment.get(m.member_id, [])]}
               for m in d.members]
    if args.json:
        _emit({"group": args.group, "members": members, "offsets": offsets})
        return 0
    n = len(members)
    print(f"group {args.group!r}: {n} live member{'' if n == 1 else 's'}")
    for m in members:
        print(f"  {m['member_id']}  {m['host']} pid {m['pid']}  topics {','.join(m['topics'])}  "
              f"assigned {' '.join(m['assigned']) or '-'}")
    _print_offsets(offsets)
    return 0


async def _new_offsets(args, admin, rows: list) -> list:
    """``[(topic, partition, old, new)]`` for reset-offsets."""
    out = []
    for t in sorted({t for _g, t, _p, _o in rows} | set(args.topic or [])):
        ranges = await admin.offset_ranges(t)
        committed = {p: off for _g, tt, p, off in rows if tt == t}
        for p, (start, end) in enumerate(ranges):
            old = committed.get(p)
            if args.to_earliest:
                new = start
            elif args.to_latest:
                new = end
            elif args.to_offset is not None:
                new = args.to_offset
            elif args.to_datetime is not None:
                from unstoppable.cli.consume import _time_ms
                hit = await admin.offset_for_time(t, p, _time_ms(args.to_datetime))
                new = end if hit is None else hit
            else:
                new = (start if old is None else old) + args.shift_by
            out.append((t, p, old, min(max(new, start), end)))
    return out


def _cmd_reset(args) -> int:
    async def work(admin):
        rows = await _log_rows(args, admin, must_exist=not args.topic)
        plan = await _new_offsets(args, admin, rows)
        if not plan:
            raise CLIError(f"nothing to reset: group {args.group!r} has no committed offsets; "
                           "name the topics with --topic")
        if not args.dry_run:
            await admin.set_committed_offsets(args.group, {(t, p): new for t, p, _o, new in plan})
        return plan
    plan = _run_admin(args, work, writes=None if args.dry_run else
                      f"reset the offsets of group {args.group!r}")
    if args.json:
        _emit({"group": args.group, "dry_run": args.dry_run,
               "offsets": [{"topic": t, "partition": p, "old": o, "new": n} for t, p, o, n in plan]})
        return 0
    wt = max(5, *(len(t) for t, *_ in plan))
    print(f"{'TOPIC':<{wt}}  PARTITION     COMMITTED    NEW OFFSET")
    for t, p, o, n in plan:
        print(f"{t:<{wt}}  {p:>9}  {'-' if o is None else f'{o:,}':>12}  {n:>12,}")
    print("dry run: nothing changed" if args.dry_run else
          f"group {args.group!r}: {len(plan)} offset{'' if len(plan) == 1 else 's'} reset")
    return 0


def _cmd_delete(args) -> int:
    _run_admin(args, lambda admin: admin.delete_group(args.group),
               writes=f"delete group {args.group!r}")
    if args.json:
        _emit({"group": args.group, "deleted": True})
    else:
        print(f"group {args.group!r} deleted ({_log_url(args)})")
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    g = sub.add_parser("groups", parents=[withlog], help="committed offsets and lag per partition",
                       epilog="Also: groups describe GROUP, groups reset-offsets GROUP ..., "
                              "groups delete GROUP (see their --help).")
    g.add_argument("group", nargs="?", help="only this group")
    g.add_argument("--sqlite", metavar="DB", help="read offsets kept by a SQLiteOffsetStore in DB")
    g.add_argument("--table", default="unstoppable_offsets", help="its table (default: %(default)s)")
    g.set_defaults(func=_cmd_groups)
    d = sub.add_parser("groups describe", parents=[withlog],
                       help="a group's live members, their assigned partitions, offsets and lag")
    d.add_argument("group", help="the group")
    d.set_defaults(func=_cmd_describe)
    r = sub.add_parser("groups reset-offsets", parents=[withlog],
                       help="move a group's committed offsets (while no member runs)")
    r.add_argument("group", help="the group")
    r.add_argument("--topic", action="append", metavar="T",
                   help="reset this topic (repeatable; default: the topics the group committed on)")
    to = r.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="to each partition's start")
    to.add_argument("--to-latest", action="store_true", help="to each partition's end (skip everything)")
    to.add_argument("--to-offset", type=int, metavar="N", help="to offset N (clamped into each partition)")
    to.add_argument("--to-datetime", metavar="TIME",
                    help="to the first record at or after an ISO-8601 time (or ms since the epoch)")
    to.add_argument("--shift-by", type=int, metavar="N", help="move each committed offset by N (may be < 0)")
    r.add_argument("--dry-run", action="store_true", help="show the new offsets, change nothing")
    r.set_defaults(func=_cmd_reset)
    x = sub.add_parser("groups delete", parents=[withlog],
                       help="forget a group's committed offsets (while no member runs)")
    x.add_argument("group", help="the group")
    x.set_defaults(func=_cmd_delete)
