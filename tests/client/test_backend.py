"""The backend contract, written once: every Backend implementation must pass
``BackendContract``. Today that is the embedded log; a remote backend adds a
subclass with its own ``backend`` fixture."""
import asyncio
import time

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP
from unstoppable.client.backend import Backend
from unstoppable.client.embedded import EmbeddedBackend, backend_for

from client_util import run


class _B:
    """A batch as the producer hands it to a backend."""

    def __init__(self, records, pid=-1, epoch=-1, seq=-1, ts=None):
        self.records = records
        self.timestamp = ts if ts is not None else time.time_ns() // 1_000_000
        self.nbytes = sum(len(r) + 22 for r in records)
        self.producer_id, self.producer_epoch, self.base_sequence = pid, epoch, seq


class BackendContract:
    """Behaviour every backend shares. Subclasses provide a ``backend``
    fixture returning a started backend with a 2-partition topic "t"."""

    def test_topic_info(self, backend):
        info = run(backend.topic_info("t"))
        assert (info.name, info.partitions) == ("t", 2)
        assert info.max_record_bytes > 0 and info.max_batch_bytes > 0
        with pytest.raises(us.UnknownTopicError):
            run(backend.topic_info("nope"))

    def test_append_fetch_and_ranges(self, backend):
        async def main():
            bases, err = await backend.append("t", 1, [_B([b"a", b"b"], ts=1000), _B([b"c"], ts=2000)],
                                              "written")
            assert err is None and bases == [0, 2]
            recs = await backend.fetch("t", 1, 1, 10, 1 << 20)
            assert [bytes(r.value) for r in recs] == [b"b", b"c"]
            assert [r.timestamp for r in recs] == [1000, 2000]
            assert await backend.offset_range("t", 1) == (0, 3)
            assert backend.known_end_offset("t", 1) == 3
            assert await backend.fetch("t", 1, 3, 10, 1 << 20) == []
            with pytest.raises(us.OffsetOutOfRangeError):
                await backend.fetch("t", 1, 4, 10, 1 << 20)
            assert await backend.offset_for_time("t", 1, 1500) == 2
            assert await backend.offset_for_time("t", 1, 10 ** 15) is None
            bases, err = await backend.append("t", 0, [_B([b"d"])], "fsync")
            assert err is None and bases == [0]
        run(main())

    def test_idempotent_retry_returns_the_original_offsets(self, backend):
        async def main():
            pid = 12345
            assert await backend.producer_state("t", 0, pid) is None
            b = _B([b"x", b"y"], pid, 0, 0)
            first, err = await backend.append("t", 0, [b], "written")
            again, err2 = await backend.append("t", 0, [b], "written")
            assert err is None and err2 is None and first == again
            assert await backend.producer_state("t", 0, pid) == (0, 2)
            _, gap = await backend.append("t", 0, [_B([b"z"], pid, 0, 7)], "written")
            assert isinstance(gap, us.OutOfOrderSequenceError)
            assert (await backend.offset_range("t", 0))[1] == first[0] + 2
        run(main())

    def test_producer_id_claim_is_exclusive(self, backend):
        async def main():
            claim = await backend.claim_producer_id(99, "ninety-nine")
            with pytest.raises(us.ProducerIdInUseError):
                await backend.claim_producer_id(99, "ninety-nine")
            claim.release()
            (await backend.claim_producer_id(99, "ninety-nine")).release()
        run(main())

    def test_wait_for_data(self, backend):
        async def main():
            t0 = time.perf_counter()
            assert await backend.wait_for_data({TP("t", 0): 0}, 0.05) is False
            assert time.perf_counter() - t0 >= 0.04

            async def later():
                await asyncio.sleep(0.05)
                await backend.append("t", 0, [_B([b"wake"])], "written")
            task = asyncio.ensure_future(later())
            assert await backend.wait_for_data({TP("t", 0): 0}, 5) is True
            await task
            # Data already there: no wait at all.
            assert await backend.wait_for_data({TP("t", 0): 0}, 5) is True
            stop = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.05, stop.set_result, None)
            assert await backend.wait_for_data({TP("t", 0): 1}, 5, stop) is True
        run(main())

    def test_group_membership_and_offsets(self, backend):
        async def main():
            m1 = await backend.join_group("grp", ["t"])
            assert await m1.poll() == {TP("t", 0), TP("t", 1)}
            m2 = await backend.join_group("grp", ["t"])
            t1, t2 = await m1.poll(), await m2.poll()
            assert t1 | t2 == {TP("t", 0), TP("t", 1)} and not (t1 & t2)
            mine = next(iter(t1))
            assert await m1.try_acquire(mine)
            assert not await m2.try_acquire(mine)
            await m1.release(mine)
            assert await m2.try_acquire(mine)
            await m2.leave()
            assert await m1.poll() == {TP("t", 0), TP("t", 1)}
            await m1.leave()
            store = backend.offset_store("grp")
            assert await store.load("grp", [TP("t", 0)]) == {}
            await store.commit("grp", {TP("t", 0): 7})
            assert await store.load("grp", [TP("t", 0), TP("t", 1)]) == {TP("t", 0): 7}
            await store.close()
        run(main())


class TestEmbeddedBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path):
        log = us.Log(tmp_path / "log")
        log.create_topic("t", partitions=2)
        yield EmbeddedBackend(log)
        log.close()


def test_backend_for(tmp_path):
    log = us.Log(tmp_path / "log")
    b = backend_for(log)
    assert isinstance(b, EmbeddedBackend) and b.log is log
    assert backend_for(b) is b

    class Handle:
        def __unstoppable_backend__(self):
            return b

    assert backend_for(Handle()) is b
    with pytest.raises(TypeError, match="Log"):
        backend_for("/some/path")
    assert issubclass(EmbeddedBackend, Backend)
    log.close()
