"""``python -m unstoppable.server --log DIR [--host H] [--port P] [--advertised-host A] [--metrics-port M]``.

:func:`register` adds the same command as ``serve`` to another argparse
parser (the ``unstoppable`` CLI); :func:`main` runs it standalone.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

__all__ = ["main", "register", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser, log: bool = True) -> None:
    """The serve command's options (``log=False``: the parser has --log already)."""
    if log:
        p.add_argument("--log", default=os.environ.get("UNSTOPPABLE_LOG"),
                       help="the log directory (default: $UNSTOPPABLE_LOG); created if missing")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092; 0: any)")
    p.add_argument("--advertised-host", default=None,
                   help="host name clients are told to connect to (default: --host)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics over HTTP on this port")
    p.add_argument("--no-auto-create-topics", dest="auto_create", action="store_false",
                   help="refuse Metadata requests for unknown topics instead of creating them")
    p.add_argument("--default-partitions", type=int, default=1,
                   help="partitions of auto-created topics (default 1)")
    p.add_argument("--max-request-bytes", type=int, default=100 << 20,
                   help="largest request accepted; bigger frames close the connection (default 100 MiB)")
    p.add_argument("--message-timestamp-before-max-ms", type=int, default=None,
                   help="refuse records stamped more than this many ms before the server's clock "
                        "with INVALID_TIMESTAMP (default: no limit); a topic's own "
                        "message.timestamp.before.max.ms replaces it")
    p.add_argument("--message-timestamp-after-max-ms", type=int, default=3_600_000,
                   help="refuse records stamped more than this many ms after the server's clock "
                        "with INVALID_TIMESTAMP (default 3600000, Kafka 4's; -1: no limit); a "
                        "topic's own message.timestamp.after.max.ms replaces it")


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to an argparse subparsers object; the parser's ``func``
    runs it and returns the exit code."""
    p = subparsers.add_parser("serve", help="serve the log to Kafka clients on a Kafka-protocol port",
                              description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _limit(ms: int | None) -> int | None:
    """A timestamp window option: None or a negative number means no limit."""
    return None if ms is None or ms < 0 else ms


def run(args) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    if not args.log:
        print("unstoppable serve: --log DIR is required (or set $UNSTOPPABLE_LOG)", file=sys.stderr)
        return 2
    try:
        from unstoppable.server.broker import Broker
        from unstoppable.server.metrics import Metrics
    except ImportError as e:
        print(f"unstoppable serve: {e.name} is missing: pip install 'unstoppable[server]'",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)

    async def serve() -> None:
        metrics = Metrics() if args.metrics_port is not None else None
        broker = Broker(args.log, args.host, args.port, advertised_host=args.advertised_host,
                        auto_create_topics=args.auto_create,
                        default_partitions=args.default_partitions,
                        max_request_bytes=args.max_request_bytes, metrics=metrics,
                        timestamp_before_max_ms=_limit(args.message_timestamp_before_max_ms),
                        timestamp_after_max_ms=_limit(args.message_timestamp_after_max_ms))
        if metrics is not None:
            metrics.attach(broker)
            metrics.serve(args.metrics_port, args.host)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await broker.start()
        watch = loop.create_task(metrics.watch_loop()) if metrics is not None else None
        # One line on stdout that tests and scripts can wait for.
        print(f"serving {broker.log_path} on {broker.host}:{broker.port}", flush=True)
        await stop.wait()
        if watch is not None:
            watch.cancel()
        await broker.close()
        if metrics is not None:
            metrics.shutdown()
        print("stopped", flush=True)

    from unstoppable.errors import UnstoppableError
    try:
        asyncio.run(serve())
    except (OSError, UnstoppableError) as e:
        print(f"unstoppable serve: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m unstoppable.server``."""
    p = argparse.ArgumentParser(prog="python -m unstoppable.server", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
