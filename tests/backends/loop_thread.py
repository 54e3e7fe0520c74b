"""Run a JetStream backend on an event loop of its own thread, for the shared
backend contract tests: those call ``run(coro)`` once per step, each time on a
fresh event loop, while a NATS connection belongs to the loop that opened it.

:class:`Bridged` forwards every call to the real object on the backend's loop
(coroutines run there; results that hold loop-bound state, such as group
members, offset stores and producer-id claims, come back bridged too). Nothing
is simulated: it is the real backend against a real server.
"""
from __future__ import annotations

import asyncio
import inspect
import threading

from unstoppable.client.backend import GroupMember
from unstoppable.client.offsets import OffsetStore


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="backend-loop", daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 60):
        """Run ``coro`` on the loop and wait for it (from plain code)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def acall(self, coro):
        """Run ``coro`` on the loop and await it (from another loop)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _needs_bridge(obj) -> bool:
    return isinstance(obj, (GroupMember, OffsetStore)) or hasattr(obj, "release")


class Bridged:
    """Forwards attribute access to ``obj``, running its methods on ``lt``'s loop."""

    def __init__(self, obj, lt: LoopThread):
        self._obj = obj
        self._lt = lt

    def __getattr__(self, name):
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr
        lt = self._lt
        if inspect.iscoroutinefunction(attr):
            async def call(*args, **kwargs):
                if name == "wait_for_data" and len(args) > 2 and args[2] is not None:
                    args = (args[0], args[1], self._bridge_future(args[2]))
                res = await lt.acall(attr(*args, **kwargs))
                return Bridged(res, lt) if _needs_bridge(res) else res
            return call

        def call_sync(*args, **kwargs):
            async def inner():
                return attr(*args, **kwargs)
            res = lt.call(inner())
            return Bridged(res, lt) if _needs_bridge(res) else res
        return call_sync

    def _bridge_future(self, fut: asyncio.Future) -> asyncio.Future:
        """A future on the backend's loop that completes when ``fut`` does."""
        lt = self._lt

        async def make():
            return lt.loop.create_future()
        theirs = lt.call(make())

        def done(_):
            lt.loop.call_soon_threadsafe(lambda: theirs.done() or theirs.set_result(None))
        fut.add_done_callback(done)
        return theirs
