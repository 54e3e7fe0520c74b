"""JetStream refuses compacted topics with a clear error (issue 19, point 6),
on a real single-node nats-server."""
from __future__ import annotations

import os
import sys

import pytest

import unstoppable as us

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backends"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
from nats_servers import server_binary, start_single, wait_for_jetstream  # noqa: E402
from client_util import run  # noqa: E402


@pytest.mark.skipif(server_binary() is None, reason="the nats-server binary is not installed")
def test_jetstream_refuses_cleanup_policy_compact(tmp_path):
    s = start_single(str(tmp_path / "nats"))
    try:
        run(wait_for_jetstream([s.url]))

        async def main():
            log = await us.connect(s.url)
            try:
                for policy in ("compact", "compact,delete"):
                    with pytest.raises(us.TopicConfigError, match="not supported on JetStream"):
                        await log.create_topic("state", 1, cleanup_policy=policy)
                with pytest.raises(us.TopicConfigError, match="must be 'delete'"):
                    await log.create_topic("state", 1, cleanup_policy="forever")
                assert "state" not in await log.topics()
                await log.create_topic("state", 1, cleanup_policy="delete")
                assert "state" in await log.topics()
            finally:
                await log.close()
        run(main())
    finally:
        s.stop()
