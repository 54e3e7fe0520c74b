"""The ``demo`` command: the ticket-booking demo."""
from __future__ import annotations

import _thread
import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

from unstoppable.cli._common import _EXIT_USAGE, CLIError, _emit, _is_remote

_INNER = "UNSTOPPABLE_DEMO_PARENT"


def _in_own_process_group(args) -> int:
    """Run this same demo command in a child process in its own process group,
    and pass Ctrl-C (and SIGTERM) on to it alone.

    A terminal sends Ctrl-C's SIGINT to its whole foreground process group.
    The demo's coordinator stops and cleans up its worker, producer and
    gateway processes itself, so SIGINT reaching those too only made each of
    them print a KeyboardInterrupt traceback. Out of the terminal's group,
    only this process gets it; it forwards it to the coordinator."""
    import subprocess
    env = dict(os.environ, **{_INNER: str(os.getpid())})
    # Its own process group (Python 3.10 has no process_group= yet).
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen([sys.executable, "-m", "unstoppable", *args.argv], env=env, **group)
    old_term = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return code if code >= 0 else 128 - code


def _stop_if_orphaned() -> None:
    """In the coordinator: act as if Ctrl-C came when the command's process
    that started it is gone (killed with SIGKILL), so the demo cleans up
    rather than running on unseen."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        _thread.interrupt_main(signal.SIGINT)
    threading.Thread(target=watch, name="unstoppable-demo-parent", daemon=True).start()


def _cmd_demo(args) -> int:
    """The ticket-booking demo (see unstoppable.booking.demo)."""
    from unstoppable.booking.demo import DemoConfig, format_summary, run_demo
    for name in ("seats", "users", "workers", "producers", "partitions"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be at least 1", _EXIT_USAGE)
    if args.window <= 0 or args.ttl_ms < 1:
        raise CLIError("--window and --ttl-ms must be positive", _EXIT_USAGE)
    if args.kill and args.workers < 2:
        raise CLIError("--workers must be at least 2 to survive a killed worker (or pass --no-kill)",
                       _EXIT_USAGE)
    url = getattr(args, "log", None)
    if url is not None and not _is_remote(url):
        raise CLIError(f"demo --log takes a JetStream URL (nats://host:port[,host:port...]), not {url!r}; "
                       f"for the embedded log use --dir {url} (the log is then {os.path.join(url, 'log')})",
                       _EXIT_USAGE)
    if args.replicas is not None:
        if url is None:
            raise CLIError("--replicas needs --log nats://... (an embedded log keeps one copy)", _EXIT_USAGE)
        if args.replicas < 1:
            raise CLIError("--replicas must be at least 1", _EXIT_USAGE)
    if os.environ.get(_INNER) != str(os.getppid()):
        return _in_own_process_group(args)
    _stop_if_orphaned()
    tmp = None
    path = args.dir
    if path is None:
        tmp = tempfile.mkdtemp(prefix="unstoppable-demo-")
        path = tmp
    kept = tmp is None or args.keep
    cfg = DemoConfig(dir=path, seats=args.seats, users=args.users, workers=args.workers,
                     producers=args.producers, partitions=args.partitions, window_s=args.window,
                     ttl_ms=args.ttl_ms, poison=args.poison, fault_rate=args.fault_rate,
                     kill=args.kill, seed=args.seed, timeout_s=args.timeout,
                     progress=True if args.progress else None, log=url, replicas=args.replicas,
                     delete_topics=not kept)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        summary = run_demo(cfg, out=say)
    finally:
        if not kept:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        summary["dir"] = os.path.abspath(path) if kept else None
        _emit(summary)
    else:
        print(format_summary(summary))
        if kept and url is None:
            print(f"log, read model (readmodel.db) and rebuild (rebuilt.db) kept in {os.path.abspath(path)}")
        elif kept:
            print(f"topics {', '.join(summary['topics'].values())} kept on {url}; read model "
                  f"(readmodel.db) and rebuild (rebuilt.db) kept in {os.path.abspath(path)}")
    return 0 if summary["ok"] else 1


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    d = sub.add_parser("demo", parents=[common], help="the ticket-booking demo (the main job)",
                       description="A concert hall sells out: users, payments, a consumer group of "
                                   "worker processes (one SIGKILLed), then a rebuild and the invariants.")
    d.add_argument("--dir", help="work in this directory and keep it (default: a temporary one)")
    d.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (and, on JetStream, the run's topics)")
    d.add_argument("--log", metavar="URL", default=argparse.SUPPRESS,
                   help="run on this JetStream cluster, nats://host:port[,host:port...] (default: an "
                        "embedded log in the demo directory); the run's topics are deleted at the end "
                        "unless the directory is kept (--dir or --keep)")
    d.add_argument("--replicas", type=int, help="JetStream: copies of each partition (default 1)")
    d.add_argument("--seats", type=int, default=10_000, help="seats in the hall (default: %(default)s)")
    d.add_argument("--users", type=int, default=100_000, help="users who try to book (default: %(default)s)")
    d.add_argument("--workers", type=int, default=3, help="booking worker processes")
    d.add_argument("--producers", type=int, default=2, help="user producer processes")
    d.add_argument("--partitions", type=int, default=8,
                   help="partitions of the bookings topic (default: %(default)s)")
    d.add_argument("--window", type=float, default=25.0, help="seconds over which users arrive")
    d.add_argument("--ttl-ms", type=int, default=2000, help="how long a hold waits for payment")
    d.add_argument("--poison", type=int, default=6, help="records that must be dead-lettered")
    d.add_argument("--fault-rate", type=float, default=0.001,
                   help="share of records whose first handling attempt fails")
    d.add_argument("--no-kill", dest="kill", action="store_false", help="do not SIGKILL a worker")
    d.add_argument("--seed", type=int, default=42, help="random seed of the users (default: %(default)s)")
    d.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    d.set_defaults(func=_cmd_demo)
