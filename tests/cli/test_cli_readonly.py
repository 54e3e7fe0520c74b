"""The CLI on a read-only log (issue 18), through a real read-only bind
mount: the reading commands work and say on stderr, in one line, that the
log is read-only and why; the writing commands fail with ReadOnlyLogError's
message as one line, and nothing under the log changes."""
import gc
import os
import shutil
import subprocess
import sys

import pytest

import unstoppable as us

SRC = os.path.dirname(os.path.dirname(us.__file__))


@pytest.fixture
def ro_log(tmp_path):
    """A log with topic ``a`` (2 partitions, 20 records) and a committed
    group ``G``, seen through a read-only bind mount (needs root)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root")
    with us.Log(src / "log") as log:
        t = log.create_topic("a", partitions=2)
        for i in range(20):
            t.partition(i % 2).append([(b"k%d" % i, b"v%d" % i)])
    from unstoppable.storage.groups import OffsetsFile
    f = OffsetsFile(str(src / "log"), "G")
    f.commit({("a", 0): 3})
    f.close()
    r = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mount --bind failed: {r.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        yield src / "log", ro / "log"
    finally:
        gc.collect()
        subprocess.run(["umount", str(ro)], check=True)


def _tree(path):
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def _cli(log, *args):
    return subprocess.run([sys.executable, "-m", "unstoppable", "--log", str(log), *args],
                          capture_output=True, text=True, input="x\n", timeout=60,
                          env={**os.environ, "PYTHONPATH": SRC})


def test_read_commands_say_the_log_is_read_only_and_why(ro_log, tmp_path):
    src, ro = ro_log
    before = _tree(src)
    for args in (("verify",), ("tail", "a", "-n", "2"), ("dump", "a"),
                 ("export", "a", "--format", "csv", "--out", str(tmp_path / "a.csv")),
                 ("topics", "list"), ("topics", "describe", "a"), ("groups",),
                 ("consume", "a", "-n", "3"), ("groups", "reset-offsets", "G", "--to-earliest",
                                               "--topic", "a", "--dry-run")):
        r = _cli(ro, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.strip(), args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith(f"unstoppable: log {ro} is read-only (")
        assert "EROFS" in lines[0], lines[0]
    assert (tmp_path / "a.csv").read_text().count("\n") >= 20
    assert _tree(src) == before


def test_write_commands_fail_with_one_line(ro_log):
    src, ro = ro_log
    before = _tree(src)
    for args, what in ((("produce", "a"), "cannot produce to topic 'a'"),
                       (("topics", "create", "b"), "cannot create topic 'b'"),
                       (("topics", "delete", "a"), "cannot delete topic 'a'"),
                       (("groups", "delete", "G"), "cannot delete group 'G'"),
                       (("groups", "reset-offsets", "G", "--to-earliest", "--topic", "a"),
                        "cannot reset the offsets of group 'G'"),
                       (("consume", "a", "--group", "G", "-n", "1"),
                        "cannot consume as group 'G'")):
        r = _cli(ro, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith(f"unstoppable: error: {what}"), lines[0]
        assert f"log {ro} is read-only (" in lines[0] and "EROFS" in lines[0], lines[0]
        assert r.stdout == "", (args, r.stdout)
    assert _tree(src) == before


def test_a_writable_log_says_nothing(tmp_path):
    log = tmp_path / "log"
    with us.Log(log) as lg:
        lg.create_topic("a").partition(0).append([b"x"])
    r = _cli(log, "verify")
    assert r.returncode == 0 and r.stderr == "", r.stderr
