"""The one place where the asyncio layer runs blocking storage calls.

fsync waits, offset commits and large writes run on a small, dedicated thread
pool (as py-lmdb's ``aio.py`` does), never on the event loop and never on the
loop's default executor, which applications fill with their own work. The pool
is created on first use and recreated in a forked child, whose copy of the
parent's threads does not exist.
"""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["run", "executor", "MAX_WORKERS"]

#: Enough threads for one fsync wait per partition of a few busy topics, plus commits.
MAX_WORKERS = 16

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The shared pool (created on first use)."""
    global _pool
    pool = _pool
    if pool is None:
        with _lock:
            pool = _pool
            if pool is None:
                pool = _pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="unstoppable-io")
    return pool


def run(fn, *args):
    """``await run(fn, *args)``: call the blocking ``fn(*args)`` on the pool."""
    return asyncio.get_running_loop().run_in_executor(executor(), fn, *args)


def _after_fork_in_child() -> None:
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
