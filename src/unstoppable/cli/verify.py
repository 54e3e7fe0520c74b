"""The ``verify`` command."""
from __future__ import annotations

from unstoppable.cli._common import _emit, _open_log, _progress


def _cmd_verify(args) -> int:
    with _open_log(args) as log:
        bar = _progress(args, "verify")
        try:
            rep = log.verify(progress=bar)
        finally:
            bar.close()
    if args.json:
        _emit(rep.as_dict())
    else:
        print(f"verified {rep.topics} topics, {rep.partitions} partitions, {rep.segments} segments, "
              f"{rep.batches:,} batches, {rep.records:,} records, {rep.bytes:,} bytes")
        for p in rep.problems:
            print(f"PROBLEM: {p}")
        print("OK: every CRC, offset and index entry checks" if rep.ok
              else f"FAILED: {len(rep.problems)} problems")
    return 0 if rep.ok else 1


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    v = sub.add_parser("verify", parents=[withlog], help="check every CRC, offset and index entry")
    v.set_defaults(func=_cmd_verify)
