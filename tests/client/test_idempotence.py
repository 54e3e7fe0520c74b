"""Idempotent producers: retries after a lost acknowledgement, restarts with
the same id (in-process and after SIGKILL), and one live producer per id."""
import asyncio
import os
import signal
import time

import pytest

import unstoppable as us
from unstoppable.client.producer import producer_id_for

from client_util import SPAWN, LostAckBackend, make_log, read_all, run, wait_until


def _values(log):
    return [bytes(r.value) for recs in read_all(log, "t").values() for r in recs]


def test_retry_after_a_lost_ack_adds_no_duplicate(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)
    backend = LostAckBackend(log, lose=3)

    async def main():
        async with us.Producer(backend, "t", producer_id="svc-a", retry_backoff_ms=1) as p:
            futs = [await p.send(b"r%d" % i, key=b"%d" % (i % 5)) for i in range(300)]
            return [await f for f in futs]

    metas = run(main())
    assert backend.attempts > 3 and backend.lose == 0   # acks really were lost and retried
    vals = _values(log)
    assert sorted(vals) == sorted(b"r%d" % i for i in range(300))  # each exactly once
    # The futures report where the records really are (the original offsets).
    for i, m in enumerate(metas):
        r = log.topic("t").partition(m.partition).read(m.offset, 1)[0]
        assert bytes(r.value) == b"r%d" % i
    log.close()


def test_without_idempotence_the_same_lost_ack_duplicates(tmp_path):
    """The control experiment: the retry is what duplicates, idempotence is what prevents it."""
    log = make_log(tmp_path / "log", partitions=1)
    backend = LostAckBackend(log, lose=1)

    async def main():
        async with us.Producer(backend, "t", retry_backoff_ms=1) as p:
            await asyncio.gather(*[await p.send(b"r%d" % i) for i in range(10)])

    run(main())
    vals = _values(log)
    assert len(vals) > 10 and set(vals) == {b"r%d" % i for i in range(10)}
    log.close()


def test_batches_carry_id_epoch_and_contiguous_sequences(tmp_path):
    log = make_log(tmp_path / "log", partitions=3)

    async def main():
        async with us.Producer(log, "t", producer_id="seq", batch_bytes=500) as p:
            await asyncio.gather(*[await p.send(b"x" * 50, key=b"%d" % i) for i in range(600)])

    run(main())
    pid = producer_id_for("seq")
    for part in log.topic("t"):
        seq = 0
        for b in part.read_batches(0, 1 << 30):
            assert (b.producer_id, b.producer_epoch, b.base_sequence) == (pid, 0, seq)
            seq += len(b)
        assert part.producer_state(pid) == (0, seq)
    log.close()


def test_restart_with_the_same_id_continues_the_sequence(tmp_path):
    """A second producer instance (after the first closed, and after the log
    was reopened) continues each partition's sequence: no gap error, no
    false duplicate."""
    path = tmp_path / "log"
    log = make_log(path, partitions=2)

    async def produce(lg, tag, n):
        async with us.Producer(lg, "t", producer_id="restarts") as p:
            await asyncio.gather(*[await p.send(b"%s-%d" % (tag, i), key=b"%d" % i) for i in range(n)])

    run(produce(log, b"a", 100))
    run(produce(log, b"b", 100))
    log.close()
    log = us.Log(path)
    run(produce(log, b"c", 100))
    vals = _values(log)
    assert sorted(vals) == sorted(b"%s-%d" % (t, i) for t in (b"a", b"b", b"c") for i in range(100))
    pid = producer_id_for("restarts")
    for part in log.topic("t"):
        assert {b.producer_id for b in part.read_batches(0, 1 << 30)} == {pid}
        seqs = [(b.base_sequence, len(b)) for b in part.read_batches(0, 1 << 30)]
        nxt = 0
        for s, n in seqs:
            assert s == nxt
            nxt += n
    log.close()


def test_a_second_live_producer_with_the_same_id_is_refused(tmp_path):
    log = make_log(tmp_path / "log")

    async def main():
        async with us.Producer(log, "t", producer_id="only-one"):
            with pytest.raises(us.ProducerIdInUseError, match="only-one"):
                async with us.Producer(log, "t", producer_id="only-one"):
                    pass
            async with us.Producer(log, "t", producer_id="another"):
                pass
        async with us.Producer(log, "t", producer_id="only-one") as p:  # released on close
            await p.send_and_wait(b"ok")

    run(main())
    log.close()


def _idempotent_writer(path, tag, n, ready_after, ready_file):
    """Produce n records with a stable id, announcing progress; meant to be SIGKILLed."""
    log = us.Log(path)

    async def main():
        async with us.Producer(log, "t", producer_id="crashy", batch_bytes=256) as p:
            for i in range(n):
                await p.send_and_wait(b"%s-%d" % (tag, i), key=b"%d" % (i % 3))
                if i == ready_after:
                    open(ready_file, "w").close()
    asyncio.run(main())
    log.close()


def test_producer_killed_with_sigkill_restarts_under_the_same_id(tmp_path):
    path = str(tmp_path / "log")
    make_log(path, partitions=3).close()
    ready = str(tmp_path / "ready")
    proc = SPAWN.Process(target=_idempotent_writer, args=(path, b"first", 10**9, 200, ready))
    proc.start()
    try:
        assert wait_until(lambda: os.path.exists(ready), timeout=30)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    # The restarted producer takes the id over at once (the kernel dropped the
    # dead one's lock) and continues its sequences.
    log = us.Log(path)
    written_before = len(_values(log))
    assert written_before > 200

    async def second():
        async with us.Producer(log, "t", producer_id="crashy") as p:
            return await asyncio.gather(*[await p.send(b"second-%d" % i, key=b"%d" % (i % 3))
                                          for i in range(300)])

    run(second())
    vals = _values(log)
    assert len(vals) == written_before + 300
    assert len(set(vals)) == len(vals)                       # no duplicates
    firsts = sorted(int(v.split(b"-")[1]) for v in vals if v.startswith(b"first-"))
    assert firsts == list(range(len(firsts)))                # the dead one's records: a gapless prefix
    pid = producer_id_for("crashy")
    for part in log.topic("t"):
        nxt = 0
        for b in part.read_batches(0, 1 << 30):
            assert b.producer_id == pid and b.base_sequence == nxt
            nxt += len(b)
    log.close()


def test_producer_state_lost_to_an_external_writer_resyncs_after_a_gap(tmp_path):
    """Someone else appended under our id (a misconfigured twin that bypassed
    the lock by writing to the partition directly): our next batch hits a
    sequence conflict, fails clearly, and the producer continues from the
    log's state afterwards instead of failing forever."""
    log = make_log(tmp_path / "log", partitions=1)
    pid = producer_id_for("twin")

    async def main():
        async with us.Producer(log, "t", producer_id="twin") as p:
            await p.send_and_wait(b"a")
            log.topic("t").partition(0).append([b"intruder-1", b"intruder-2"], producer_id=pid,
                                                producer_epoch=0, base_sequence=1)
            with pytest.raises(us.OutOfOrderSequenceError):
                await p.send_and_wait(b"b")   # sequence 1 again, but one record, not two: refused
            return await p.send_and_wait(b"c")

    m = run(main())
    assert [bytes(r.value) for r in log.topic("t").partition(0).read(0)] == [
        b"a", b"intruder-1", b"intruder-2", b"c"]
    assert m.offset == 3
    log.close()


def test_after_a_refused_batch_later_batches_continue_from_the_logs_sequence(tmp_path):
    """Several ready batches, the first refused: the ones behind it must not
    inherit its sequence numbers (which would make each a gap in turn)."""
    log = make_log(tmp_path / "log", partitions=1)
    pid = producer_id_for("cascade")

    async def main():
        async with us.Producer(log, "t", producer_id="cascade", linger_ms=10_000,
                               batch_bytes=100) as p:
            first = await p.send(b"first")
            await p.flush()
            await first
            # A twin writes sequence 1 with two records: our next batch (one
            # record at sequence 1) is refused; the ones after it must land.
            log.topic("t").partition(0).append([b"t1", b"t2"], producer_id=pid, producer_epoch=0,
                                                base_sequence=1)
            futs = [await p.send(b"r%d" % i + b"x" * 150) for i in range(4)]  # one batch each
            return await asyncio.gather(*futs, return_exceptions=True)

    res = run(main())
    assert isinstance(res[0], us.OutOfOrderSequenceError)
    assert all(isinstance(r, us.RecordMetadata) for r in res[1:]), res
    vals = [bytes(r.value)[:2] for r in log.topic("t").partition(0).read(0)]
    assert vals == [b"fi", b"t1", b"t2", b"r1", b"r2", b"r3"]
    log.close()


def test_a_producer_the_log_forgot_starts_its_sequence_over(tmp_path):
    """Retention deleted everything an idempotent producer wrote while it was
    idle, so the log forgot it (UnknownProducerError for its next sequence).
    The Producer starts the sequence over from 0 and writes the batch: the
    application sees no error, and nothing is lost or written twice."""
    log = us.Log(tmp_path / "log")
    part = log.create_topic("t", partitions=1, segment_bytes=4096,
                            retention_bytes=4096 * 3).partition(0)
    pid = producer_id_for("idle")

    async def main():
        async with us.Producer(log, "t", producer_id="idle") as p:
            first = await p.send_and_wait(b"before")
            # Others write while it is idle: rolls, and retention deletes its segment.
            for _ in range(30):
                part.append([b"x" * 900])
            assert part.start_offset > first.offset
            assert part.producer_state(pid) is None          # forgotten by the log
            with pytest.raises(us.UnknownProducerError):     # what the log says to sequence 1
                part.append([b"probe"], producer_id=pid, producer_epoch=0, base_sequence=1)
            after = await p.send_and_wait(b"after")           # no error for the application
            again = await p.send_and_wait(b"after-2")
            return after, again

    after, again = run(main())
    recs = part.read(after.offset, 10)
    assert [bytes(r.value) for r in recs] == [b"after", b"after-2"]
    batches = part.read_batches(after.offset, 1 << 20)
    assert [(b.producer_id, b.base_sequence) for b in batches] == [(pid, 0), (pid, 1)]
    assert part.producer_state(pid) == (0, 2)
    log.close()
