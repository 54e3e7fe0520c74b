"""Helpers for the server tests: a real server subprocess and a raw Kafka-protocol client."""
from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m unstoppable.server`` on ``log_dir``; restartable on the same port."""

    def __init__(self, log_dir, metrics: bool = True, extra=()):
        self.log_dir = str(log_dir)
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.stderr_path = os.path.join(os.path.dirname(self.log_dir), f"server-{self.port}.err")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
        cmd = [sys.executable, "-m", "unstoppable.server", "--log", self.log_dir,
               "--port", str(self.port), *self.extra]
        if self.metrics_port:
            cmd += ["--metrics-port", str(self.metrics_port)]
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        finally:
            err.close()
        line = self.proc.stdout.readline().decode()
        if not line.startswith("serving"):
            self.proc.wait(5)
            raise RuntimeError(f"server did not start: {line!r}; stderr: {self.stderr()}")
        return self

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        """SIGKILL, then wait for the process to be gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()

    def stop(self) -> int:
        """SIGTERM; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        self.proc.stdout.close()
        return self.proc.returncode

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")



def wait_until(pred, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


class RawClient:
    """A bare Kafka-protocol connection: requests encoded by kio, answers decoded by kio."""

    def __init__(self, bootstrap: str, timeout: float = 10.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.corr = 0

    def close(self):
        self.sock.close()

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def recv_frame(self) -> bytes:
        size = struct.unpack(">i", self._exact(4))[0]
        return self._exact(size)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def header(self, key: int, ver: int, client_id: bytes = b"raw") -> bytes:
        self.corr += 1
        return struct.pack(">hhih", key, ver, self.corr, len(client_id)) + client_id

    def request(self, req, ver: int | None = None):
        """Send a kio request object and return the decoded response."""
        from kio.index import load_response_schema
        from kio.serial import entity_reader, entity_writer
        ver = type(req).__version__ if ver is None else ver
        key = type(req).__api_key__
        buf = io.BytesIO()
        entity_writer(type(req))(buf, req)
        self.send_frame(self.header(key, ver) + buf.getvalue())
        frame = self.recv_frame()
        corr = struct.unpack_from(">i", frame, 0)[0]
        assert corr == self.corr, (corr, self.corr)
        obj, _ = entity_reader(load_response_schema(key, ver))(frame, 4)
        return obj
