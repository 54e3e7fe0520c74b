"""Helpers of the reliability suite: the fork-server client, reading what
children acknowledged, and the full check of a log after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import unstoppable as us

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = os.path.join(HERE, "workers.py")
sys.path.insert(0, HERE)
from workers import digest, parse_value  # noqa: E402

__all__ = ["Zygote", "read_acks", "check_log", "snapshot_tree", "digest", "parse_value",
           "run_child", "WORKERS"]


class Zygote:
    """Client of ``workers.py zygote``: fork children that have unstoppable
    already imported, kill them with SIGKILL, reap them."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, WORKERS, "zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.children: set[int] = set()

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (exit {self.proc.poll()})")
        return json.loads(line)

    def spawn(self, role: str, args: dict, out) -> int:
        pid = self._ask({"op": "spawn", "role": role, "args": args, "out": str(out)})["pid"]
        self.children.add(pid)
        return pid

    def wait(self, pid: int, block: bool = True):
        """Exit status (-signal or code), or None when still running (block=False)."""
        st = self._ask({"op": "wait", "pid": pid, "block": block})["status"]
        if st is not None:
            self.children.discard(pid)
        return st

    def kill(self, pid: int) -> int:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.wait(pid)

    def close(self) -> None:
        for pid in list(self.children):
            self.kill(pid)
        try:
            self._ask({"op": "exit"})
        except (RuntimeError, BrokenPipeError, ValueError):
            pass
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.wait(10)


def drop_torn_line(path) -> None:
    """After the writer of ``path`` was SIGKILLed: cut off a last line it
    left without its newline, so the next incarnation's lines start on lines
    of their own. (A write(2) in progress when SIGKILL arrives can end short:
    the page-cache copy stops at a fatal signal. Seen once in ~170 kills.)"""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                f.truncate(keep)
    except FileNotFoundError:
        pass


def read_acks(path) -> tuple[list, list]:
    """(acks, errors) from a produce child's acks file. An ack is
    ``(partition, offset, digest, producer, incarnation, i)``; a last line
    without its newline (a kill mid-write) is ignored."""
    acks, errors = [], []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return acks, errors
    for line in data.split(b"\n")[:-1]:
        if line.startswith(b"E "):
            errors.append(line.decode())
            continue
        p, off, dig, name, inc, i = line.split()
        acks.append((int(p), int(off), dig.decode(), name.decode(), int(inc), int(i)))
    return acks, errors


def read_partition(p) -> list:
    """[(offset, value bytes)] of a whole partition, checking that offsets are dense."""
    out = []
    off = p.start_offset
    end = p.end_offset
    while off < end:
        rs = p.read(off, max_records=10_000, max_bytes=8 << 20)
        assert rs, f"no records at {p.topic}/{p.index}@{off} below the end {end}"
        for k, r in enumerate(rs):
            assert r.offset == off + k, f"offset hole: expected {off + k}, got {r.offset}"
            out.append((r.offset, bytes(r.value)))
        off += len(rs)
    return out


def check_log(path, topic: str, acks: list, figures, *, retry_last_batch: bool = True) -> dict:
    """Reopen the log at ``path`` (recovering it) and check it against what
    was acknowledged:

    * every acknowledged record at or above the partition's start offset is
      present, with the same digest and the same identity;
    * offsets are dense (``read_partition``) and ``verify()`` finds nothing;
    * no send (producer, incarnation, i) appears twice;
    * per key, each producer's records are in the order it sent them;
    * retrying the last idempotent batch of each partition, as a restarted
      producer would, returns its original offsets and appends nothing.

    Updates ``figures`` and returns counts; raises AssertionError on a problem.
    """
    t0 = time.perf_counter()
    log = us.Log(path, create=False)
    try:
        t = log.topic(topic)
        reopen = time.perf_counter() - t0
        figures.max("longest_reopen_seconds", reopen)
        for p in t:
            figures.max("longest_recovery_seconds", p.recovery.seconds)
        content = {}
        starts = {}
        seen = {}
        duplicates = []
        order_breaks = []
        for p in t:
            starts[p.index] = p.start_offset
            last = {}
            for off, value in read_partition(p):
                content[(p.index, off)] = value
                ident = parse_value(value)
                if ident[:3] in seen:
                    duplicates.append((ident[:3], seen[ident[:3]], (p.index, off)))
                seen[ident[:3]] = (p.index, off)
                k = (ident[0], ident[3])
                if k in last and last[k] >= ident[1:3]:
                    order_breaks.append((p.index, off, k, last[k], ident[1:3]))
                last[k] = ident[1:3]
        lost = []
        checked = 0
        for part, off, dig, name, inc, i in acks:
            if off < starts[part]:
                continue  # removed by retention
            v = content.get((part, off))
            if v is None or digest(v) != dig or parse_value(v)[:3] != (name, inc, i):
                lost.append((part, off, dig, name, inc, i, None if v is None else v[:40]))
            else:
                checked += 1
        rep = log.verify()
        retried = 0
        if retry_last_batch:
            for p in t:
                if p.end_offset == p.start_offset:
                    continue
                b = p.read_batches(p.end_offset - 1)[-1]
                if b.producer_id < 0:
                    continue
                end = p.end_offset
                recs = [(r.key, r.value, r.headers, r.timestamp) for r in b.records()]
                base = p.append(recs, producer_id=b.producer_id, producer_epoch=b.producer_epoch,
                                base_sequence=b.base_sequence)
                assert (base, p.end_offset) == (b.base_offset, end), (
                    f"a retry of the batch at {p.topic}/{p.index}@{b.base_offset} (producer "
                    f"{b.producer_id}, sequence {b.base_sequence}) was appended again at {base}")
                retried += 1
    finally:
        log.close()
    figures.add("records_lost", len(lost))
    figures.add("duplicates_appended", len(duplicates))
    assert not lost, f"{len(lost)} acknowledged records lost or changed, first: {lost[:5]}"
    assert not duplicates, f"{len(duplicates)} records appended twice, first: {duplicates[:5]}"
    assert not order_breaks, f"per-key order broken: {order_breaks[:5]}"
    assert rep.ok, rep.problems
    return {"checked": checked, "records": len(content), "retried": retried, "reopen": reopen}


def snapshot_tree(root) -> dict:
    """{relative path: (kind, bytes or None, mode)} of everything under ``root``."""
    out = {}
    root = str(root)
    if not os.path.exists(root):
        return out
    for d, dirs, files in os.walk(root):
        for name in dirs:
            pth = os.path.join(d, name)
            out[os.path.relpath(pth, root)] = ("dir", None, os.stat(pth).st_mode)
        for name in files:
            pth = os.path.join(d, name)
            with open(pth, "rb") as fh:
                out[os.path.relpath(pth, root)] = ("file", fh.read(), os.stat(pth).st_mode)
    return out


def run_child(code: str, *args, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    """Run ``python -X faulthandler=0 -c code args...``: a fault kills the child
    with its signal (a negative returncode) instead of printing and exiting."""
    return subprocess.run([sys.executable, "-X", "faulthandler=0", "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def group_by(items, key):
    out = defaultdict(list)
    for it in items:
        out[key(it)].append(it)
    return out
