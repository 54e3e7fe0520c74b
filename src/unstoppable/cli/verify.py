"""The ``verify`` command."""
from __future__ import annotations

from unstoppable.cli._common import _emit, _n, _open_log, _progress


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
        print(f"verified {_n(rep.topics, 'topic')}, {_n(rep.partitions, 'partition')}, "
              f"{_n(rep.segments, 'segment')}, {_n(rep.batches, 'batch')}, {_n(rep.records, 'record')}, "
              f"{_n(rep.bytes, 'byte')}")
        for p in rep.problems:
            print(f"PROBLEM: {p}")
        print("OK: every CRC, offset and index entry checks" if rep.ok
              else f"FAILED: {_n(len(rep.problems), 'problem')}")
    return 0 if rep.ok else 1


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    v = sub.add_parser("verify", parents=[withlog], help="check every CRC, offset and index entry")
    v.set_defaults(func=_cmd_verify)
