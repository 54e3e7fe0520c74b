"""``unstoppable serve``: the log behind a Kafka-protocol port, for every
Kafka client (the server itself is :mod:`unstoppable.server`)."""
from __future__ import annotations

import os

__all__ = ["register"]


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    from unstoppable.server.__main__ import add_arguments  # argparse only: the server loads on run
    p = sub.add_parser("serve", parents=[withlog],
                       help="serve the log to Kafka clients (kcat, librdkafka, aiokafka, ...) on a port",
                       description="Serve the log on a Kafka-protocol port until SIGTERM or Ctrl-C. "
                                   "Needs the server extra: pip install 'unstoppable[server]'.")
    add_arguments(p, log=False)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    from unstoppable.server.__main__ import run
    args.log = getattr(args, "log", None) or os.environ.get("UNSTOPPABLE_LOG")
    return run(args)
