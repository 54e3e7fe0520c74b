"""Helpers shared by the client tests (and importable by spawned workers)."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time

import unstoppable as us
from unstoppable.client import _executor
from unstoppable.client.embedded import EmbeddedBackend

SPAWN = mp.get_context("spawn")


def run(coro, timeout: float = 60):
    """Run a coroutine to completion with a hard timeout (a hung test fails)."""
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


class SlowDiskBackend(EmbeddedBackend):
    """The real embedded backend behind a disk that takes ``delay`` seconds per
    write call (the sleep runs on the client's I/O threads, like a slow
    device would). Used to make a producer far faster than its disk."""

    def __init__(self, log, delay: float):
        super().__init__(log)
        self.delay = delay
        self.append_now = None  # every write pays the slow device
        self.calls = 0

    async def append(self, topic, partition, batches, acks):
        self.calls += 1
        await _executor.run(time.sleep, self.delay)
        return await super().append(topic, partition, batches, acks)


class LostAckBackend(EmbeddedBackend):
    """The real embedded backend whose first ``lose`` write calls land on disk
    but report a timeout, as when an acknowledgement is lost on the way back.
    The producer must retry; with idempotence the retry adds nothing."""

    def __init__(self, log, lose: int = 1):
        super().__init__(log)
        self.lose = lose
        self.append_now = None
        self.attempts = 0

    async def append(self, topic, partition, batches, acks):
        self.attempts += 1
        bases, err = await super().append(topic, partition, batches, acks)
        if err is None and self.lose > 0:
            self.lose -= 1
            return [], TimeoutError("acknowledgement lost (test)")
        return bases, err


def wait_until(pred, timeout: float = 20.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def read_all(log, topic: str) -> dict:
    """{partition: [Record]} of everything in a topic."""
    t = log.topic(topic)
    out = {}
    for p in range(t.partitions):
        part = t.partition(p)
        recs, off = [], part.start_offset
        while off < part.end_offset:
            got = part.read(off, 10_000)
            recs.extend(got)
            off = got[-1].offset + 1
        out[p] = recs
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def make_log(path, topic="t", partitions=4, **cfg):
    log = us.Log(path)
    log.create_topic(topic, partitions=partitions, **cfg)
    return log
