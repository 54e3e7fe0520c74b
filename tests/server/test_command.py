"""The command line: ``python -m unstoppable.server`` and the ``register`` hook."""
import argparse
import os
import subprocess
import sys

from server_util import SRC

from unstoppable.server.__main__ import register, run


def test_register_adds_serve_to_a_parser():
    parser = argparse.ArgumentParser(prog="unstoppable")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["serve", "--log", "d", "--port", "0", "--advertised-host", "h",
                              "--metrics-port", "9999"])
    assert args.func is run
    assert (args.log, args.port, args.advertised_host, args.metrics_port) == ("d", 0, "h", 9999)
    assert args.host == "127.0.0.1" and args.auto_create


def _run(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "unstoppable.server", *argv], capture_output=True,
                          text=True, timeout=60,
                          env=dict(env or os.environ, PYTHONPATH=os.path.abspath(SRC)))


def test_missing_log_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k != "UNSTOPPABLE_LOG"}
    r = _run("--port", "0", env=env)
    assert r.returncode == 2 and "--log DIR is required" in r.stderr


def test_a_directory_that_is_no_log_gives_one_clear_line(tmp_path):
    (tmp_path / "stranger.txt").write_text("not a log")
    r = _run("--log", str(tmp_path), "--port", "0")
    assert r.returncode == 1
    assert "is not empty and has no unstoppable.json" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_port_in_use_gives_one_clear_line(tmp_path, server):
    r = _run("--log", str(tmp_path / "other"), "--port", str(server.port))
    assert r.returncode == 1 and "address already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_unstoppable_serve_is_the_same_command_and_kcat_round_trips(tmp_path):
    """``unstoppable --log DIR serve`` (the main CLI, --log given before the
    command) serves the log; kcat produces into it and reads the records back,
    and the Python API sees what kcat wrote."""
    import shutil
    import unstoppable as us
    from server_util import free_port
    if shutil.which("kcat") is None:
        raise AssertionError("kcat is missing: .ci/run installs it (apt-get install kcat)")
    port = free_port()
    log_dir = tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    with subprocess.Popen([sys.executable, "-m", "unstoppable", "--log", str(log_dir), "serve",
                           "--port", str(port), "--default-partitions", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        try:
            assert proc.stdout.readline().decode().startswith("serving"), proc.stderr.read()
            b = f"127.0.0.1:{port}"
            subprocess.run(["kcat", "-b", b, "-P", "-t", "served", "-K", ":"], check=True, timeout=60,
                           input=b"k1:v1\nk2:v2\n")
            out = subprocess.run(["kcat", "-b", b, "-C", "-t", "served", "-e", "-f", "%k=%s\n"],
                                 check=True, timeout=60, capture_output=True).stdout
            assert out.decode().splitlines() == ["k1=v1", "k2=v2"]
        finally:
            proc.terminate()
            assert proc.wait(30) == 0
    with us.Log(log_dir) as log:
        recs = log.topic("served").partition(0).read(0)
        assert [(bytes(r.key), bytes(r.value)) for r in recs] == [(b"k1", b"v1"), (b"k2", b"v2")]
