"""The ``compact`` command: compact a topic (or every compacted topic) now."""
from __future__ import annotations

from unstoppable.cli._common import CLIError, _emit, _n, _open_log, _progress


def _cmd_compact(args) -> int:
    from unstoppable.errors import TopicConfigError, UnknownTopicError
    from unstoppable.storage.compaction import cleanable_bytes
    with _open_log(args) as log:
        try:
            names = [args.topic] if args.topic else \
                [n for n in log.topics() if log.topic(n).config.compacted]
            for n in names:
                if not log.topic(n).config.compacted:
                    raise CLIError(f"topic {n!r} has cleanup_policy="
                                   f"{log.topic(n).config.cleanup_policy!r}: only topics created "
                                   "with --cleanup-policy compact (or compact,delete) are compacted")
        except UnknownTopicError as e:
            raise CLIError(str(e.args[0])) from None
        total = sum(cleanable_bytes(p) for n in names for p in log.topic(n))
        bar = _progress(args, "compact", total)
        done = [0]

        def step(nbytes: int) -> None:
            done[0] += nbytes
            bar(done[0])
        try:
            results = []
            for n in names:
                try:
                    results += log.compact(n, progress=step)
                except TopicConfigError as e:
                    raise CLIError(str(e)) from None
        finally:
            bar.close()
    if args.json:
        _emit([r._asdict() for r in results])
        return 0
    if not names:
        print("no compacted topics")
        return 0
    for r in results:
        print(f"{r.topic}/{r.partition}: {_n(r.segments_cleaned, 'segment')} rewritten, "
              f"{_n(r.records_removed, 'record')} removed ({r.tombstones_removed:,} tombstones), "
              f"{r.records_kept:,} kept, {_n(r.keys, 'key')} in the offset map, "
              f"{r.bytes_read:,} bytes read, {r.bytes_written:,} written")
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    c = sub.add_parser("compact", parents=[withlog],
                       help="compact a topic now: keep the latest record of every key")
    c.add_argument("topic", nargs="?", metavar="TOPIC",
                   help="the topic to compact (default: every topic whose cleanup policy has "
                        "'compact')")
    c.set_defaults(func=_cmd_compact)
