"""Producer fencing on the embedded log: a new instance of a producer id takes
over from one that is hung (SIGSTOP), idle past producer_timeout_ms, or at
once with fence=True; it bumps the epoch, and nothing the old instance sends
afterwards reaches the log. Real processes, real files."""
import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

import unstoppable as us
from unstoppable.client.producer import producer_id_for
from unstoppable.errors import ProducerFencedError, ProducerIdInUseError
from unstoppable.storage.producer_ids import ProducerIdLock

SRC = os.path.dirname(os.path.dirname(us.__file__))


def values(log, topic):
    """{partition: [bytes(value), ...]} in offset order."""
    out = {}
    t = log.topic(topic)
    for p in range(t.partitions):
        part = t.partition(p)
        vals, off = [], part.start_offset
        while recs := part.read(off, 10_000):
            vals += [bytes(r.value) for r in recs]
            off = recs[-1].offset + 1
        out[p] = vals
    return out


def test_storage_fencing_and_dedup_across_takeover(tmp_path):
    """At the storage layer: the old epoch is refused in every partition, even
    one the new owner never wrote to; the new epoch's retries deduplicate."""
    with us.Log(tmp_path / "log") as log:
        t = log.create_topic("t", partitions=2)
        pid = producer_id_for("orders")
        a = ProducerIdLock(log.path, pid, "orders")
        assert a.epoch == 0 and not a.fenced_previous
        p0, p1 = t.partition(0), t.partition(1)
        assert p0.append([b"a0"], producer_id=pid, producer_epoch=0, base_sequence=0) == 0
        with pytest.raises(ProducerIdInUseError, match="fence=True"):
            ProducerIdLock(log.path, pid, "orders")  # a live, fresh owner
        b = ProducerIdLock(log.path, pid, "orders", fence=True)
        assert b.epoch == 1 and b.fenced_previous
        assert a.current_epoch() == 1
        # The zombie: its next append fails everywhere, retries included.
        for part, seq in ((p0, 1), (p0, 0), (p1, 0)):
            with pytest.raises(ProducerFencedError, match="epoch 0 is fenced"):
                part.append([b"zombie"], producer_id=pid, producer_epoch=0, base_sequence=seq)
        # The new owner starts its epoch at sequence 0; a retry is deduplicated.
        assert p0.append([b"b0", b"b1"], producer_id=pid, producer_epoch=1, base_sequence=0) == 1
        assert p0.append([b"b0", b"b1"], producer_id=pid, producer_epoch=1, base_sequence=0) == 1
        assert p0.append([b"b2"], producer_id=pid, producer_epoch=1, base_sequence=2) == 3
        assert p0.producer_state(pid) == (1, 3)
        a.heartbeat()  # a fenced owner's heartbeat does not move the new owner's
        assert values(log, "t") == {0: [b"a0", b"b0", b"b1", b"b2"], 1: []}
        a.release()
        b.release()
        # The owner released the id: the next claim gets it at once, same epoch.
        c = ProducerIdLock(log.path, pid, "orders")
        assert c.epoch == 1 and not c.fenced_previous
        c.release()
    # The fence is on disk: another process refuses epoch 0 too.
    code = (
        "import sys, unstoppable as us\n"
        "from unstoppable.errors import ProducerFencedError\n"
        "log = us.Log(sys.argv[1])\n"
        "try:\n"
        f"    log.topic('t').partition(1).append([b'z'], producer_id={pid}, producer_epoch=0, base_sequence=0)\n"
        "    print('accepted')\n"
        "except ProducerFencedError:\n"
        "    print('fenced')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "log")], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert r.stdout.strip() == "fenced", r.stderr


def test_fence_true_takes_over_in_process(tmp_path):
    async def main():
        with us.Log(tmp_path / "log") as log:
            log.create_topic("t", partitions=3)
            old = us.Producer(log, "t", producer_id="x")
            await old.start()
            for i in range(30):
                await old.send(b"old-%d" % i, key=b"%d" % i)
            await old.flush()
            with pytest.raises(ProducerIdInUseError):
                await us.Producer(log, "t", producer_id="x").start()
            new = us.Producer(log, "t", producer_id="x", fence=True)
            await new.start()
            futs = [await old.send(b"late-%d" % i, key=b"%d" % i) for i in range(30)]
            await old.flush()
            for f in futs:
                with pytest.raises(ProducerFencedError):
                    await f
            with pytest.raises(ProducerFencedError):
                await (await old.send(b"later", key=b"1"))
            for i in range(30):
                await (await new.send(b"new-%d" % i, key=b"%d" % i))
            await old.close()
            await new.close()
            vals = values(log, "t")
            flat = [v for p in vals.values() for v in p]
            assert sorted(flat) == sorted([b"old-%d" % i for i in range(30)]
                                          + [b"new-%d" % i for i in range(30)])
            for p in vals.values():  # per partition: the old instance's, then the new one's
                kinds = [v.split(b"-")[0] for v in p]
                assert kinds == sorted(kinds, key=lambda k: k == b"new")
    asyncio.run(main())


def test_idle_holder_is_taken_over_after_producer_timeout(tmp_path):
    async def main():
        with us.Log(tmp_path / "log") as log:
            log.create_topic("t")
            old = us.Producer(log, "t", producer_id="idle", producer_timeout_ms=400)
            await (await old.send(b"one"))
            t0 = time.monotonic()
            with pytest.raises(ProducerIdInUseError, match="producer_timeout_ms=400"):
                await us.Producer(log, "t", producer_id="idle", producer_timeout_ms=400).start()
            await asyncio.sleep(max(0.0, 0.45 - (time.monotonic() - t0)))
            new = us.Producer(log, "t", producer_id="idle", producer_timeout_ms=400)
            await new.start()
            assert new._id_lock.fenced_previous and new._id_lock.epoch == 1
            with pytest.raises(ProducerFencedError):
                await (await old.send(b"two"))
            await (await new.send(b"three"))
            await old.close()
            await new.close()
            assert values(log, "t") == {0: [b"one", b"three"]}
    asyncio.run(main())


WRITER = r"""
import asyncio, sys, unstoppable as us
from unstoppable.errors import ProducerFencedError
async def main():
    log = us.Log(sys.argv[1])
    async with us.Producer(log, "t", producer_id="worker", producer_timeout_ms=60_000) as p:
        i = 0
        while True:
            try:
                await (await p.send(b"old-%d" % i, key=b"%d" % (i % 7)))
            except ProducerFencedError:
                print("FENCED", i, flush=True)
                return
            print("ACK", i, flush=True)
            i += 1
            await asyncio.sleep(0.002)
asyncio.run(main())
"""


def stop_outside_appends(proc, path):
    """SIGSTOP the writer at a moment it holds no partition's append lock.

    Stopped inside an append, it would hold that partition's OS lock, and
    every other writer of the partition would wait until it continues or
    dies: fencing does not (and cannot) take that lock from it."""
    part_locks = {os.stat(os.path.join(path, "topics", "t", str(p), "lock")).st_ino
                  for p in range(3)}
    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.02)
        with open("/proc/locks") as f:
            held = [line.split() for line in f]
        if not any(len(x) > 5 and x[4] == str(proc.pid) and int(x[5].rsplit(":", 1)[1]) in part_locks
                   for x in held):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the writer always held a partition lock when stopped")


@pytest.mark.parametrize("how", ["timeout", "fence"])
def test_sigstopped_producer_is_fenced(tmp_path, how):
    """A real writer process is stopped; a new instance takes over (after
    producer_timeout_ms, or at once with fence=True); the stopped one is
    continued and its next write fails. Nothing it sent after the takeover is
    in the log, and every record it saw acknowledged is."""
    path = tmp_path / "log"
    with us.Log(path) as log:
        log.create_topic("t", partitions=3)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": SRC})
    # Every line the writer prints, through one reader. (Reading the first
    # lines with readline() and the rest with communicate() lost lines:
    # readline() buffers whatever the pipe holds, and communicate() reads the
    # descriptor past that buffer. Under load several ACK lines wait in the
    # pipe at once, so acknowledged records looked unacknowledged: the two
    # full-suite failures, of 1 and 5 records.)
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    acked = []
    try:
        while len(acked) < 50:
            line = lines.get(timeout=60)
            assert line, "the writer exited early"
            acked.append(int(line.split()[1]))
        stop_outside_appends(proc, path)

        async def take_over():
            with us.Log(path) as log:
                if how == "fence":
                    new = us.Producer(log, "t", producer_id="worker", fence=True)
                else:
                    # The stopped holder stops heartbeating: a short timeout passes.
                    new = us.Producer(log, "t", producer_id="worker", producer_timeout_ms=300)
                    with pytest.raises(ProducerIdInUseError):
                        await us.Producer(log, "t", producer_id="worker").start()
                    await asyncio.sleep(0.35)
                await new.start()
                assert new._id_lock.fenced_previous
                for i in range(20):
                    await (await new.send(b"new-%d" % i, key=b"%d" % (i % 7)))
                await new.close()
        asyncio.run(take_over())
        proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=60)
        rest = []
        while (line := lines.get(timeout=60)) is not None:
            rest.append(line)
        out = "".join(rest)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    lines = out.split("\n")
    acked += [int(x.split()[1]) for x in lines if x.startswith("ACK")]
    fenced = [x for x in lines if x.startswith("FENCED")]
    assert len(fenced) == 1, out
    with us.Log(path) as log:
        vals = values(log, "t")
    old_in_log = sorted(int(v.split(b"-")[1]) for p in vals.values() for v in p
                        if v.startswith(b"old-"))
    new_in_log = sorted(int(v.split(b"-")[1]) for p in vals.values() for v in p
                        if v.startswith(b"new-"))
    assert new_in_log == list(range(20))
    # Every acknowledged record is there once; the fenced send is not.
    if old_in_log != sorted(acked):   # say which records differ, and how (kept for a flake seen twice)
        from collections import Counter
        extra, missing = Counter(old_in_log) - Counter(acked), Counter(acked) - Counter(old_in_log)
        per_part = {p: [v for v in vs if v.startswith(b"old-")][-8:] for p, vs in vals.items()}
        raise AssertionError(f"in the log, not acknowledged: {sorted(extra.elements())}; acknowledged, "
                             f"not in the log: {sorted(missing.elements())}; fenced at "
                             f"{fenced[0]!r}; last old records per partition: {per_part}; "
                             f"writer output tail: {lines[-12:]}")
    assert int(fenced[0].split()[1]) not in old_in_log
    for p in vals.values():  # the zombie wrote nothing after the new instance did
        kinds = [v.split(b"-")[0] for v in p]
        assert kinds == sorted(kinds, key=lambda k: k == b"new"), kinds
