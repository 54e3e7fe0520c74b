"""Leases on the stream ``US__LEASES``: group membership, partition ownership
and producer-id claims, taken with an expected last subject sequence,
renewed by their holder and expired by the server.
"""
from __future__ import annotations

import asyncio
import json

from unstoppable.backends.jetstream._constants import (
    _E_MSG_DELETE_NONE,
    _E_WRONG_LAST_SEQ,
    _TRANSIENT,
    LEASES_STREAM,
)
from unstoppable.backends.jetstream._wire import (
    api_error,
)
from unstoppable.errors import (
    BackendError,
    BackendTimeoutError,
)


class _Lease:
    __slots__ = ("subject", "value", "rev", "lost")

    def __init__(self, subject: bytes, value: bytes, rev: int):
        self.subject = subject
        self.value = value
        self.rev = rev          # stream sequence of our current lease message
        self.lost = False


class _Leases:
    """Leases on ``US__LEASES``: taken with an expected last subject sequence
    of 0 (nobody holds it), renewed every ttl/4 with our own last sequence,
    released by deleting our message. The server forgets a lease whose holder
    stopped renewing it ``ttl`` seconds after the last renewal."""

    def __init__(self, log):  # the JetStreamLog that owns them
        self.log = log
        self.held: set = set()
        self._task: asyncio.Task | None = None
        self._releasing: dict[bytes, asyncio.Task] = {}
        self._renewing: dict[_Lease, asyncio.Task] = {}   # renewals in flight

    async def _put(self, subject: bytes, value: bytes, expected: int) -> int | None:
        hdr = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\n\r\n" % expected
        _, p = await self.log.wire.request(subject, value, hdr)
        ack = json.loads(p)
        err = ack.get("error")
        if err is not None:
            if err.get("err_code") == _E_WRONG_LAST_SEQ:
                return None
            raise api_error(f"lease {subject.decode()}", err)
        return int(ack["seq"])

    async def holder(self, subject: bytes) -> tuple[int, bytes] | None:
        """``(stream sequence, value)`` of the current lease message, or None."""
        msg = await self.log._last_message(LEASES_STREAM, subject.decode())
        return None if msg is None else (msg[0], msg[1])

    async def acquire(self, subject: bytes, value: bytes) -> tuple[_Lease | None, bytes | None]:
        """``(lease, None)``, or ``(None, holder's value)`` when someone holds
        it. ``value`` must be unique to this holder: an attempt whose
        acknowledgement was lost is recognised as ours by it."""
        pending = self._releasing.get(subject)
        if pending is not None:
            await asyncio.shield(pending)
        await self.log._ensure_internal_streams()
        for _ in range(3):
            try:
                rev = await self.log._retrying(lambda: self._put(subject, value, 0))
            except BackendTimeoutError:
                rev = None  # it may have landed: look below
            if rev is None:
                held = await self.log._retrying(lambda: self.holder(subject))
                if held is None:
                    continue  # released or expired meanwhile: try again
                if held[1] != value:
                    return None, held[1]
                rev = held[0]  # our own attempt, acknowledgement lost
            lease = _Lease(subject, value, rev)
            self.held.add(lease)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._keeper())
            return lease, None
        return None, b""

    async def release(self, lease: _Lease) -> None:
        self.held.discard(lease)
        if lease.lost:
            return
        lease.lost = True
        renewing = self._renewing.get(lease)
        if renewing is not None:
            # A renewal in flight would put a new lease message after the
            # delete below, and the lease would outlive its release by a TTL.
            # Wait for it: lease.rev is then the message to delete.
            await asyncio.wait([renewing])
        try:
            await self.log.wire.api(f"STREAM.MSG.DELETE.{LEASES_STREAM}", {"seq": lease.rev})
        except BackendError as e:
            if e.err_code != _E_MSG_DELETE_NONE:
                raise
        except _TRANSIENT:
            pass  # it expires by itself within the TTL

    def release_soon(self, lease: _Lease) -> asyncio.Task | None:
        """Release without waiting (for synchronous callers); a later acquire
        of the same subject in this process waits for it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.held.discard(lease)
            return None  # no loop: the lease expires within the TTL
        task = loop.create_task(self.release(lease))
        self._releasing[lease.subject] = task
        task.add_done_callback(lambda t, s=lease.subject: (
            self._releasing.pop(s, None) if self._releasing.get(s) is t else None,
            t.cancelled() or t.exception()))
        return task

    async def _renew(self, lease: _Lease) -> None:
        try:
            rev = await self._put(lease.subject, lease.value, lease.rev)
            if rev is None:
                held = await self.holder(lease.subject)
                if held is not None and held[1] == lease.value:
                    rev = held[0]  # an earlier renewal landed unacknowledged
                elif held is None:  # expired meanwhile; take it again unless somebody else did
                    rev = await self._put(lease.subject, lease.value, 0)
        except (BackendError, *_TRANSIENT):
            return  # try again at the next round; the TTL gives us time
        if rev is None:
            lease.lost = True
            self.held.discard(lease)
        else:
            lease.rev = rev

    async def _keeper(self) -> None:
        while self.held:
            await asyncio.sleep(self.log.lease_ttl / 4)
            leases = [lease for lease in list(self.held) if not lease.lost]
            if leases:
                loop = asyncio.get_running_loop()
                tasks = [loop.create_task(self._renew(lease)) for lease in leases]
                self._renewing.update(zip(leases, tasks))
                try:
                    # One failed renewal must not end the others' (return_exceptions).
                    await asyncio.gather(*tasks, return_exceptions=True)
                finally:
                    for lease in leases:
                        self._renewing.pop(lease, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
        for lease in list(self.held):
            try:
                await asyncio.wait_for(self.release(lease), 1.0)
            except Exception:
                pass  # expires within the TTL
        for task in list(self._releasing.values()):
            try:
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            except BaseException:
                pass
