"""The ``dlq`` commands: list and re-drive dead letters."""
from __future__ import annotations

from unstoppable.cli._common import (
    _EXIT_USAGE,
    CLIError,
    _emit,
    _n,
    _Parser,
    _run_on_log,
    _text,
)


def _cmd_dlq(args) -> int:
    from unstoppable.booking import deadletters as dl
    if args.dlq_cmd == "list":
        letters = _run_on_log(args, lambda log: dl.read_dead_letters(log, args.topic))
        if not args.all:
            letters = [d for d in letters if not d.redriven]
        if args.json:
            _emit([{"id": f"{d.partition}/{d.offset}", "origin": f"{d.origin_topic}/"
                    f"{d.origin_partition}/{d.origin_offset}", "error": d.error,
                    "attempts": d.attempts, "timestamp": d.timestamp, "key": _text(d.key),
                    "redriven": d.redriven} for d in letters])
        elif not letters:
            print("no dead letters")
        else:
            print("ID        ORIGIN                          ATTEMPTS  ERROR")
            for d in letters:
                origin = f"{d.origin_topic}/{d.origin_partition}/{d.origin_offset}"
                mark = " (redriven)" if d.redriven else ""
                print(f"{d.partition}/{d.offset:<7} {origin:<32} {d.attempts:>8}  {d.error}{mark}")
        return 0
    if not args.all and not args.ids:
        raise CLIError("dlq redrive needs dead-letter ids (PARTITION/OFFSET, see dlq list) or --all",
                       _EXIT_USAGE)
    which = None
    if not args.all:
        which = []
        for i in args.ids:
            a, sep, b = i.partition("/")
            if not sep or not a.isdigit() or not b.isdigit():
                raise CLIError(f"bad dead-letter id {i!r}: write PARTITION/OFFSET", _EXIT_USAGE)
            which.append((int(a), int(b)))
    try:
        done = _run_on_log(args, lambda log: dl.redrive(log, args.topic, which),
                           writes="redrive dead letters")
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    skipped = sorted(set(which or ()) - {(d.partition, d.offset) for d, _ in done})
    if args.json:
        _emit([{"id": f"{d.partition}/{d.offset}", "to": f"{d.origin_topic}/{d.origin_partition}/{new}"}
               for d, new in done] + [{"id": f"{p}/{o}", "skipped": "re-driven already"} for p, o in skipped])
    else:
        for p, o in skipped:
            print(f"{p}/{o} was re-driven already: skipped (dlq list --all shows it)")
        for d, new in done:
            print(f"re-drove {d.partition}/{d.offset} to {d.origin_topic}/{d.origin_partition} "
                  f"at offset {new}")
        print(f"{_n(len(done), 'dead letter')} re-driven")
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    q = sub.add_parser("dlq", help="dead letters: list and re-drive")
    qsub = q.add_subparsers(dest="dlq_cmd", required=True, metavar="ACTION", parser_class=_Parser)
    ql = qsub.add_parser("list", parents=[withlog], help="list dead letters")
    ql.add_argument("--topic", default="booking-dlq", help="the dead-letter topic (default: %(default)s)")
    ql.add_argument("--all", action="store_true", help="include those re-driven already")
    qr = qsub.add_parser("redrive", parents=[withlog],
                         help="append dead letters to their origin partition again")
    qr.add_argument("ids", nargs="*", metavar="ID", help="PARTITION/OFFSET of a dead letter")
    qr.add_argument("--topic", default="booking-dlq", help="the dead-letter topic (default: %(default)s)")
    qr.add_argument("--all", action="store_true", help="re-drive every dead letter not re-driven yet")
    q.set_defaults(func=_cmd_dlq)
