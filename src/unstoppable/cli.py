"""The ``unstoppable`` command line.

    unstoppable demo [--dir DIR] [--records N] [--partitions P]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import unstoppable as us


def _demo(args) -> int:
    """Append records to a partitioned topic, reopen the log, read everything
    back, check it, and print what it measured."""
    tmp = None
    path = args.dir
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="unstoppable-demo-")
        path = tmp.name
    try:
        n, parts = args.records, args.partitions
        value = b"x" * 100
        chunk = 10_000
        with us.Log(os.path.join(path, "log")) as log:
            topic = log.create_topic("events", partitions=parts)
            t0 = time.perf_counter()
            for p in topic:
                done = 0
                while done < n // parts:
                    k = min(chunk, n // parts - done)
                    p.append([(b"%d" % (done + i), value) for i in range(k)])
                    done += k
            dt = time.perf_counter() - t0
            total = sum(p.end_offset for p in topic)
            print(f"appended {total:,} records of 100 bytes to {parts} partitions "
                  f"in {dt:.2f} s ({total / dt:,.0f} records/s)")
        t0 = time.perf_counter()
        with us.Log(os.path.join(path, "log")) as log:
            topic = log.topic("events")
            reopen = time.perf_counter() - t0
            t0 = time.perf_counter()
            seen = 0
            for p in topic:
                off = p.start_offset
                while off < p.end_offset:
                    for b in p.read_batches(off, 4 << 20):
                        seen += len(b.records(off))
                        off = b.next_offset
            dt = time.perf_counter() - t0
            print(f"reopened in {reopen * 1000:.1f} ms; read {seen:,} records back in {dt:.2f} s "
                  f"({seen / dt:,.0f} records/s)")
            rep = log.verify()
            print(f"verify: {rep.batches:,} batches, {rep.records:,} records, "
                  f"{'no problems' if rep.ok else f'{len(rep.problems)} PROBLEMS'}")
            ok = rep.ok and seen == total == (n // parts) * parts
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="unstoppable", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="append, reopen, read back and verify a log")
    d.add_argument("--dir", help="keep the log in this directory (default: a temporary one)")
    d.add_argument("--records", type=int, default=1_000_000)
    d.add_argument("--partitions", type=int, default=8)
    d.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except us.UnstoppableError as e:
        print(f"unstoppable: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
