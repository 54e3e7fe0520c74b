"""The ``bench`` command: a quick throughput run."""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

from unstoppable.cli._common import _EXIT_USAGE, CLIError, _emit, _progress


def _cmd_bench(args) -> int:
    import unstoppable as us
    if args.records < 1 or args.value_bytes < 0 or args.partitions < 1:
        raise CLIError("--records and --partitions must be >= 1, --value-bytes >= 0", _EXIT_USAGE)
    tmp = tempfile.mkdtemp(prefix="unstoppable-bench-", dir=args.dir)
    n, value = args.records, b"x" * args.value_bytes
    result = {"records": n, "value_bytes": args.value_bytes, "partitions": args.partitions,
              "acks": args.acks}
    try:
        log = us.Log(os.path.join(tmp, "log"))
        log.create_topic("bench", partitions=args.partitions)
        bar = _progress(args, "produce", n)

        async def produce():
            async with us.Producer(log, "bench", acks=args.acks, linger_ms=1) as p:
                t0 = time.perf_counter()
                for i in range(n):
                    await p.send(value, key=b"%d" % (i % 1000))
                    if i % 20000 == 0:
                        bar.update(i)
                await p.flush()
                return time.perf_counter() - t0

        async def consume():
            got = 0
            async with us.Consumer(log, "bench") as c:
                t0 = time.perf_counter()
                while got < n:
                    batch = await c.getmany(max_records=10000, timeout_ms=1000)
                    if not batch:
                        break
                    got += sum(len(v) for v in batch.values())
                    bar.update(got)
                return got, time.perf_counter() - t0

        dt = asyncio.run(produce())
        bar.close()
        bar = _progress(args, "consume", n)
        got, dt2 = asyncio.run(consume())
        bar.close()
        log.close()
        if got != n:
            raise CLIError(f"bench read back {got} of {n} records")
        result.update({"produce_s": round(dt, 3), "produce_records_per_s": round(n / dt),
                       "produce_mb_per_s": round(n * args.value_bytes / dt / 1e6, 1),
                       "consume_s": round(dt2, 3), "consume_records_per_s": round(n / dt2),
                       "consume_mb_per_s": round(n * args.value_bytes / dt2 / 1e6, 1)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        _emit(result)
    else:
        print(f"produce: {n:,} records of {args.value_bytes} bytes to {args.partitions} partitions "
              f"(acks={args.acks}) in {result['produce_s']} s: "
              f"{result['produce_records_per_s']:,} records/s, {result['produce_mb_per_s']} MB/s")
        print(f"consume: {n:,} records in {result['consume_s']} s: "
              f"{result['consume_records_per_s']:,} records/s, {result['consume_mb_per_s']} MB/s")
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    b = sub.add_parser("bench", parents=[common], help="a quick produce and consume throughput run")
    b.add_argument("--records", type=int, default=500_000, metavar="N",
                   help="records to produce and then consume (default: %(default)s)")
    b.add_argument("--value-bytes", type=int, default=100, metavar="B",
                   help="bytes of each value (default: %(default)s)")
    b.add_argument("--partitions", type=int, default=4, metavar="N",
                   help="partitions of the temporary topic (default: %(default)s)")
    b.add_argument("--acks", choices=("written", "fsync"), default="written",
                   help="written (default): acknowledged once written; fsync: once on disk")
    b.add_argument("--dir", help="make the temporary log under this directory")
    b.set_defaults(func=_cmd_bench)
