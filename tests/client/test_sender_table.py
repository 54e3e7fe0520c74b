"""The sender's one retry/restart table (client/sender.py) and the
``retriable`` attribute it reads (unstoppable.errors)."""
import asyncio

import pytest

import unstoppable as us
from unstoppable import errors
from unstoppable.client.accumulator import Batch
from unstoppable.client.sender import FAIL, RESTART, RETRY, TIMEOUT, decide


def _batch():
    loop = asyncio.new_event_loop()
    try:
        return Batch("t", 0, loop, 0)
    finally:
        loop.close()


@pytest.mark.parametrize("exc, retriable", [
    (us.DiskFullError(28, "No space left on device"), True),
    (us.BackendUnavailableError("no leader"), True),
    (us.BackendTimeoutError("no answer"), True),
    (us.DeliveryTimeoutError("late"), True),
    (TimeoutError(), True),
    (ConnectionResetError(), True),
    (InterruptedError(), True),
    (us.CorruptLogError("bad"), False),
    (us.RecordTooLargeError("big"), False),
    (us.UnknownProducerError("forgot"), False),
    (us.BackendError("refused"), False),
    (OSError(5, "EIO"), False),
    (ValueError(), False),
])
def test_retriable(exc, retriable):
    assert errors.is_retriable(exc) is retriable
    if isinstance(exc, us.UnstoppableError):
        assert exc.retriable is retriable


def test_decide_table():
    b = _batch()
    assert decide(us.DiskFullError(28, "full"), b, expired=False) == RETRY
    assert decide(us.DiskFullError(28, "full"), b, expired=True) == TIMEOUT
    assert decide(us.CorruptLogError("bad"), b, expired=False) == FAIL
    assert decide(us.UnknownProducerError("forgot"), b, expired=True) == RESTART
    b.restarted = True  # only once per batch
    assert decide(us.UnknownProducerError("forgot"), b, expired=False) == FAIL


def test_for_code_is_the_one_table():
    for code, (cls, reason) in errors.ERROR_MAP.items():
        e = errors.for_code(code, topic="t", partition=3, offset=7)
        assert type(e) is cls and e.reason == reason
        assert "topic 't'" in str(e) and "partition 3" in str(e) and "offset 7" in str(e)
    e = errors.for_code(99)
    assert isinstance(e, us.CorruptLogError) and "code 99" in str(e)
    assert errors.corrupt_from_code(4).reason == "CRC-32C mismatch"


@pytest.mark.parametrize("url, remote", [
    ("nats://h:4222", True), ("NATS://h:4222", True), ("tls://h:1,g:2", True),
    ("data", False), ("file:///tmp/x", False), ("natsdir", False), ("", False), (None, False),
])
def test_is_remote_url(url, remote):
    from unstoppable.connect import is_remote_url
    assert is_remote_url(url) is remote


def test_nats_servers():
    from unstoppable.connect import nats_servers
    assert nats_servers("nats://a:1,b") == ["nats://a:1", "nats://b:4222"]
    assert nats_servers("TLS://u:p@[::1]:5") == ["tls://u:p@[::1]:5"]
    with pytest.raises(us.InvalidURLError, match="not a NATS URL"):
        nats_servers("data")
    with pytest.raises(us.InvalidURLError, match="port"):
        nats_servers("nats://a:99999")
