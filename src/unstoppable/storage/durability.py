"""Durability: one group-commit engine for every partition of a log.

Layers, as asyncpg splits its protocol (an I/O-free core under the drivers):

* :class:`DurableState`, one per partition: how far it is known durable
  (``durable_end``), whether a failed fdatasync failed it for good
  (``failed``), what a round must sync (:meth:`~DurableState.plan`:
  duplicated descriptors of the segments past the checkpoint, at most
  ``SYNC_SEGMENTS_PER_ROUND`` of them) and what a
  round's result means (:meth:`~DurableState.result`: move the checkpoint, or
  fail the partition).
* :class:`CommitRounds`, the I/O-free round planner: what is pending,
  round numbers, rounds that could not start for a partition, and the one
  :meth:`~CommitRounds.outcome` of a request (durable, never, or wait).
* Two drivers over them. :class:`ThreadCommitter` blocks the caller's
  thread (one leader syncs every partition someone waits on; the others
  share its round) and answers callback requests from one sync thread.
  :class:`LoopCommitter` runs rounds from an asyncio event loop, with the
  fdatasyncs on C threads (``LoopSyncer``) that never take the GIL.

A failed fdatasync marks its partition failed for good (after a failed
fsync the kernel may have dropped the dirty pages, so a retry could report
success for lost data: PostgreSQL's "fsyncgate"). A failure before any
fdatasync (opening or duplicating a segment's descriptor: EMFILE, say)
fails only the requests that round was for; a later request gets a new round.

:class:`Flusher` is the log's background thread that fsyncs segments sealed
by a roll.
"""
from __future__ import annotations

import os
import queue
import select
import threading
import time
import traceback
import weakref

from unstoppable._core.segment import LoopSyncer, dup_fd, sync_files
from unstoppable.errors import LogClosedError, UnstoppableError
from unstoppable.storage._fs import O_CLOEXEC

__all__ = ["DurableState", "CommitRounds", "ThreadCommitter", "LoopCommitter", "Flusher", "WAIT"]

#: The outcome of a durability request that needs another round.
WAIT = object()

_COMMIT_DELAY_STEP = 0.0001   # s: wait this long for more partitions to join a sync
#: At most this many segments of one partition in one round: a round holds a
#: duplicated descriptor of each segment it syncs, and a checkpoint far behind
#: (the flusher thread descheduled for 0.3 s under load while 4 KiB segments
#: rolled) put hundreds in one round, past a small descriptor limit (EMFILE).
#: A partition further behind is brought up in several rounds, back to back.
SYNC_SEGMENTS_PER_ROUND = 8


class _Upto:
    """The sync target of a round that covers only the sealed segments
    before ``active_base`` (the checkpoint moves to that segment's start)."""
    __slots__ = ("ckpt_base", "active_base", "active_size", "end_offset")

    def __init__(self, ckpt_base: int, base: int):
        self.ckpt_base = ckpt_base
        self.active_base = base
        self.active_size = 0
        self.end_offset = base   # a segment's base is the offset of its first record
_COMMIT_DELAY_MAX = 0.001     # s: but never longer than this in all


class DurableState:
    """What one partition knows of its durability, and how to sync it.

    ``lock`` and ``flock`` are the partition's in-process and append locks;
    ``state()`` reads the head (repairing it if need be) and
    ``locked_state()`` does so with both locks held. ``dirpath`` is the
    partition's directory: a round that must fsync it opens it (in
    :meth:`plan`, so running out of descriptors fails that round, never the
    partition) and keeps the descriptor until :meth:`release_dir`.
    """

    def __init__(self, topic: str, index: int, dirpath: str, lock, flock, head, catalog,
                 state, locked_state):
        self.topic = topic
        self.index = index
        self.durable_end = 0       # offsets below are known on stable storage
        self.failed: BaseException | None = None  # a failed fdatasync: refuses writes for good
        self.closed = False
        self._dirpath = dirpath
        self._dirfd = -1
        self.in_flight = 0         # rounds planned whose result() has not run yet
        self._dir_synced = False
        self._lock = lock
        self._flock = flock
        self._head = head
        self._catalog = catalog
        self._state = state
        self._locked_state = locked_state

    def __repr__(self):
        return f"<DurableState {self.topic}/{self.index} durable_end={self.durable_end}>"

    def check_written(self, end_offset: int) -> None:
        """A durability request may only name offsets already written."""
        if end_offset > self._state().end_offset:
            raise ValueError(f"end_offset {end_offset} is past the end of {self.topic}/{self.index}")

    def why_not(self, end_offset: int) -> BaseException:
        """The error for a request that will never be durable: the partition
        failed, or closed first."""
        if self.failed is not None:
            e = UnstoppableError(f"fsync of {self.topic}/{self.index} failed")
            e.__cause__ = self.failed
            return e
        return LogClosedError(
            f"partition {self.topic}/{self.index} was closed before "
            f"offset {end_offset} was known durable")

    def not_synced(self, cause: BaseException) -> BaseException:
        """The error for waiters of a round that could not start syncing this
        partition (``cause``: EMFILE, say); the partition is not failed."""
        e = UnstoppableError(
            f"could not sync {self.topic}/{self.index} (the records are "
            f"written, not known durable): {cause}")
        e.__cause__ = cause
        return e

    def plan(self):
        """What a sync must cover: ``(target, fds)`` with duplicated
        descriptors of the segments past the checkpoint (the caller closes
        them), or None when everything is already durable. ``target`` is the
        head state read, or, when more than ``SYNC_SEGMENTS_PER_ROUND``
        segments are past the checkpoint, the start of the first segment
        left out: the round covers the ones before it, and the next round
        goes on from there."""
        catalog = self._catalog
        with self._lock:
            for attempt in range(3):
                st = self._state()
                if st.ckpt_base == st.active_base and st.ckpt_size == st.active_size:
                    return None
                bases = catalog.bases
                if (attempt or not bases or bases[-1] != st.active_base
                        or st.ckpt_base not in bases):
                    catalog.refresh(st)
                    bases = catalog.bases
                if self._dirfd < 0 and (st.active_base != st.ckpt_base
                                        or not self._dir_synced):
                    self._dirfd = os.open(self._dirpath, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
                # Duplicated: they outlive the segment (retention, OPEN_SEGMENTS).
                todo = [b for b in bases if b >= st.ckpt_base]
                target = st
                if len(todo) > SYNC_SEGMENTS_PER_ROUND:
                    todo, target = todo[:SYNC_SEGMENTS_PER_ROUND], _Upto(
                        st.ckpt_base, todo[SYNC_SEGMENTS_PER_ROUND])
                fds = []
                try:
                    for b in todo:
                        fds.append(dup_fd(catalog.get(b).fd))
                except FileNotFoundError:
                    # A segment that is not open here was deleted by retention
                    # in another process, which moved the checkpoint past it
                    # first: read the head again.
                    for fd in fds:
                        os.close(fd)
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    for fd in fds:
                        os.close(fd)
                    raise
                self.in_flight += 1
                return target, fds

    def note_synced(self) -> None:
        """Nothing was left to sync: everything written is durable."""
        end = self._state().end_offset
        if end > self.durable_end:
            self.durable_end = end

    def result(self, st, errnos) -> None:
        """After the fdatasyncs of a plan (one errno per descriptor, 0 when
        synced): move the checkpoint and the durable offset, or fail the
        partition for good. A failed fdatasync is never retried: the kernel
        may have dropped the dirty pages, so a retry could report success
        for lost data (PostgreSQL's "fsyncgate")."""
        failed = [e for e in errnos if e]
        try:
            self._result(st, failed)
        finally:
            with self._lock:
                self.in_flight -= 1

    def abandoned(self) -> None:
        """A planned round that never synced (its result will not come)."""
        with self._lock:
            self.in_flight -= 1

    def _result(self, st, failed) -> None:
        try:
            if failed:
                raise OSError(failed[0], f"fdatasync of {self.topic}/{self.index}: "
                              f"{os.strerror(failed[0])}")
            done = self._sync_done(st)
        except OSError as e:
            self.failed = e
            return
        if done > self.durable_end:
            self.durable_end = done

    def _sync_done(self, st) -> int:
        """After the fdatasyncs of a plan: the directory if needed, then move
        the checkpoint to what was synced. Returns the durable end offset."""
        if st.active_base != st.ckpt_base or not self._dir_synced:
            os.fsync(self._dirfd)  # directory entries of new segment files (and of the head)
            self._dir_synced = True
        with self._lock, self._flock:
            cur = self._locked_state()
            if (st.active_base, st.active_size) > (cur.ckpt_base, cur.ckpt_size):
                cur.ckpt_base, cur.ckpt_size = st.active_base, st.active_size
                cur.ckpt_end_offset = st.end_offset
                self._head.write(cur)
        return st.end_offset

    def release_dir(self) -> bool:
        """Close the directory descriptor unless a round is in flight (partition
        lock held): whether it is closed now (a round opens it again)."""
        if self.in_flight:
            return False
        self._close_dir()
        return True

    def close(self) -> None:
        """Mark closed (requests still waiting get LogClosedError) and close
        the directory descriptor."""
        self.closed = True
        self._close_dir()

    def _close_dir(self) -> None:
        fd, self._dirfd = self._dirfd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class CommitRounds:
    """The round planner both drivers share. No I/O and no locking: a driver
    calls it under its own lock (the thread driver) or from its one thread
    (the loop driver).

    Rounds are numbered as they start. A request registered while round k
    runs (or after it) is served by round k+1 or later, so a round that
    could not even start syncing a partition (``plan_errors``: state ->
    (round, error)) fails just the requests made before it.
    """

    def __init__(self):
        self.pending: dict = {}       # DurableState -> end offset a round must reach
        self.round_no = 0
        self.plan_errors: dict = {}

    def want(self, ds: DurableState, end_offset: int) -> None:
        """A round must bring ``ds`` to ``end_offset``."""
        self.pending[ds] = max(self.pending.get(ds, 0), end_offset)

    def take(self) -> tuple[int, list]:
        """Start a round: its number and the states it covers."""
        self.round_no += 1
        states = list(self.pending)
        self.pending.clear()
        return self.round_no, states

    def failed_to_start(self, no: int, errors: dict) -> None:
        """Round ``no`` could not start syncing these states (state -> error)."""
        for ds, e in errors.items():
            self.plan_errors[ds] = (no, e)

    def outcome(self, ds: DurableState, end_offset: int, reg: int, stopped: bool = False):
        """None when the offsets are durable, the error when they never will
        be (or the round for them failed), or WAIT. ``reg`` is the round
        number when the request was made."""
        if ds.durable_end >= end_offset:
            return None
        if ds.failed is not None or ds.closed or stopped:
            return ds.why_not(end_offset)
        pe = self.plan_errors.get(ds)
        if pe is not None and pe[0] > reg:
            return ds.not_synced(pe[1])
        return WAIT


def plan_round(states) -> tuple[list, list, dict]:
    """Plan a round over ``states``: ``(plans, fds, errors)`` with plans
    ``(state, head state, n_fds)``, every duplicated descriptor in order, and
    the states whose plan failed (nothing was synced for them: no fsyncgate)."""
    plans, fds, errors = [], [], {}
    for ds in states:
        if ds.failed is not None or ds.closed:
            continue
        try:
            plan = ds.plan()
        except Exception as e:
            errors[ds] = e
            continue
        if plan is None:
            ds.note_synced()
        else:
            plans.append((ds, plan[0], len(plan[1])))
            fds.extend(plan[1])
    return plans, fds, errors


def finish_round(plans, errnos, skip_closed: bool = False) -> None:
    """Hand each planned state its share of the round's errnos."""
    i = 0
    for ds, st, n in plans:
        if not (skip_closed and ds.closed):
            ds.result(st, errnos[i:i + n])
        i += n


# ---------------------------------------------------------------------------
# The thread driver

class ThreadCommitter:
    """Group commit for every partition of a log, run by the threads that wait.

    A thread that needs durability registers (state, end offset). If no
    sync is running it becomes the leader: it takes every registered
    partition, has the kernel start writing all their dirty segment files at
    once and then fdatasyncs them one by one (``sync_files``, without the
    GIL), and moves each checkpoint. Threads that arrive meanwhile wait and are covered by the
    next round. Measured here: 8 files of 13 KB took 2.3 ms as 8 plain
    fdatasyncs and 1.2 ms with the writeback started for all first.

    :meth:`request` is the non-blocking form: a single syncer thread runs
    rounds back to back while requests are pending and answers them by callback.
    """

    def __init__(self):
        self._reset()
        _THREAD_OWNERS.add(self)

    def _reset(self) -> None:
        """Fresh state (also in a forked child, which has none of the
        parent's threads and may have inherited the lock held)."""
        self._cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._rounds = CommitRounds()
        # Asynchronous waiters (request()): (state, end_offset, callback, round_no).
        self._requests: list = []
        self._syncer: threading.Thread | None = None
        self._stopping = False

    def _outcome(self, ds, end_offset, reg):
        return self._rounds.outcome(ds, end_offset, reg, self._stopping)

    def request(self, ds: DurableState, end_offset: int, callback) -> None:
        """Call ``callback(error)`` (``None`` on success) once every offset of
        ``ds``'s partition below ``end_offset`` is on stable storage, or it can
        no longer get there. The callback runs on a sync thread (or right here
        when nothing is left to do); it must be quick and must not block."""
        with self._cond:
            reg = self._rounds.round_no
            err = self._outcome(ds, end_offset, reg)
            if err is WAIT:
                self._requests.append((ds, end_offset, callback, reg))
                if self._syncer is None:
                    self._syncer = threading.Thread(target=self._run_syncer,
                                                    name="unstoppable-sync", daemon=True)
                    self._syncer.start()
                elif not self._syncing:
                    self._cond.notify_all()
                return
        callback(err)

    def _take_answered(self) -> list:
        """(lock held) Remove and return the requests that have their answer."""
        if not self._requests:
            return []
        done, keep = [], []
        for req in self._requests:
            err = self._outcome(req[0], req[1], req[3])
            if err is WAIT:
                keep.append(req)
            else:
                done.append((req[2], err))
        self._requests = keep
        return done

    @staticmethod
    def _answer(done) -> None:
        for cb, err in done:
            try:
                cb(err)
            except Exception:  # a callback's bug must not stop the sync thread
                traceback.print_exc()

    def _run_syncer(self) -> None:
        cond = self._cond
        cond.acquire()
        try:
            while True:
                done = self._take_answered()
                if done:
                    cond.release()
                    try:
                        self._answer(done)
                    finally:
                        cond.acquire()
                    continue
                if self._stopping and not self._requests:
                    return
                if not self._requests or self._syncing:
                    cond.wait()
                    continue
                # Requests need a round and none is running: run one now. No
                # commit delay: whatever is written while this round runs
                # joins the next one, which starts as soon as this one ends.
                # (What they need goes into pending here, not at request():
                # a blocking leader's round may have taken it since.)
                for ds, end, _, _ in self._requests:
                    self._rounds.want(ds, end)
                self._round()
        finally:
            cond.release()

    def stop(self) -> None:
        """Answer every request (closed partitions get LogClosedError) and end
        the syncer thread."""
        with self._cond:
            self._stopping = True
            t = self._syncer
            self._cond.notify_all()
        if t is not None and t is not threading.current_thread():
            t.join()
        with self._cond:
            done = self._take_answered()
        self._answer(done)

    def wait(self, ds: DurableState, end_offset: int) -> None:
        """Block until ``ds``'s partition is durable below ``end_offset``;
        raise the error that keeps it from getting there."""
        cond = self._cond
        with cond:
            reg = self._rounds.round_no
            while ds.durable_end < end_offset:
                # Failed for good, closed under us (topic deleted or log
                # closed), or the round for these offsets failed before
                # syncing: say so instead of waiting forever.
                err = self._outcome(ds, end_offset, reg)
                if err is not WAIT:
                    raise err
                self._rounds.want(ds, end_offset)
                if self._syncing:
                    cond.wait()
                    continue
                self._syncing = True
                self._commit_delay()
                self._round()

    def _commit_delay(self) -> None:
        """(Lock held.) While other partitions keep arriving (flushes started
        together, each from its own thread), give them a moment to join this
        round; alone, this costs one short wait."""
        deadline = time.monotonic() + _COMMIT_DELAY_MAX
        seen = len(self._rounds.pending)
        while True:
            self._cond.wait(_COMMIT_DELAY_STEP)
            if len(self._rounds.pending) == seen or time.monotonic() > deadline:
                break
            seen = len(self._rounds.pending)

    def _round(self) -> None:
        """(Lock held.) Sync every pending partition, with the lock released
        meanwhile; then wake every waiter (the syncer thread answers the
        asynchronous requests)."""
        self._syncing = True
        no, states = self._rounds.take()
        self._cond.release()
        errors: dict = {}
        try:
            self._sync(states, errors)
        finally:
            self._cond.acquire()
            self._rounds.failed_to_start(no, errors)
            self._syncing = False
            self._cond.notify_all()

    @staticmethod
    def _sync(states, errors: dict) -> None:
        plans, fds, plan_errors = plan_round(states)
        errors.update(plan_errors)
        try:
            # close=True: the duplicates are closed in the same GIL-free call.
            errnos = list(sync_files(fds, True))
        except BaseException:
            for fd in fds:  # it raised before touching them
                os.close(fd)
            for ds, _, _ in plans:
                ds.abandoned()
            raise
        finish_round(plans, errnos)


# ---------------------------------------------------------------------------
# The event-loop driver

class LoopCommitter:
    """Group commit for ``acks="fsync"`` appends made on one event loop, run
    by that loop.

    The loop writes a batch, then asks for it to become durable. If fewer
    than ``max_rounds`` rounds are in flight, a round starts at once: the
    loop plans it (:meth:`DurableState.plan`) and hands the descriptors to a
    :class:`~unstoppable._core.segment.LoopSyncer`, a C thread that starts
    writeback of all, fdatasyncs each and makes a pipe readable. Otherwise
    the request waits for the next round, which starts as soon as one ends
    and covers everything asked for meanwhile. When a round ends the loop
    moves each checkpoint (:meth:`DurableState.result`) and answers every
    request that is now durable.

    Why the loop and not the log's sync thread (:class:`ThreadCommitter`)
    runs the Python of a round: a thread that wakes from fdatasync must take
    the GIL back from the loop, and each hand-off costs the loop time in both
    directions. With 1,000 fsync senders the log's sync thread ran 1,700
    rounds of 1.3 partitions each, 0.6 ms per round, and the loop's small
    pwrites took 15.7 us at the median instead of 2.4 (9,500-10,800
    voluntary context switches per 300k records). Here the sync threads
    never take the GIL. Two rounds in flight rather than one: with one, the
    senders fell into two cohorts taking turns and the loop sat idle 0.15-0.19 s
    per 300k records waiting for rounds; with two it never idled (see the
    README for the measured rates).
    """

    def __init__(self, loop, max_rounds: int = 2):
        self.loop = loop
        self._max_rounds = max_rounds
        self._idle: list = []       # LoopSyncers with no round in flight
        self._busy: dict = {}       # LoopSyncer -> its round: [(state, head state, n_fds)]
        self._waiters: list = []    # [state, end_offset, callback, round_no at request]
        self._rounds = CommitRounds()
        self._scheduled = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a closed committer takes no requests)."""
        return self._closed

    def request(self, ds: DurableState, end_offset: int, fn) -> None:
        """Call ``fn(error)`` on the loop once ``ds``'s partition is durable
        below ``end_offset`` (``error`` None), or cannot get there."""
        if self._closed:
            raise RuntimeError("durability requests after the committer closed")
        self._waiters.append([ds, end_offset, fn, self._rounds.round_no])
        if ds.durable_end < end_offset:
            self._rounds.want(ds, end_offset)
        if len(self._busy) < self._max_rounds:
            self._start()

    def _syncer(self):
        if self._idle:
            return self._idle.pop()
        sy = LoopSyncer()
        self.loop.add_reader(sy.fileno(), self._round_done, sy)
        return sy

    def _start(self) -> None:
        """Plan and hand over a round for what is pending. Requests this
        answers (already durable, or the plan failed) are answered from a
        loop callback, never from inside ``request``."""
        if self._closed or not self._rounds.pending or len(self._busy) >= self._max_rounds:
            return
        no, states = self._rounds.take()
        plans, fds, errors = plan_round(states)
        self._rounds.failed_to_start(no, errors)
        started = False
        if fds:
            try:
                sy = self._syncer()
                sy.submit(fds)  # owns the descriptors from here on
            except Exception as e:
                self._rounds.failed_to_start(no, {ds: e for ds, _, _ in plans})
                for ds, _, _ in plans:
                    ds.abandoned()
            else:
                self._busy[sy] = plans
                started = True
        if not started and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._answer_later)

    def _answer_later(self) -> None:
        self._scheduled = False
        self._answer()
        self._start()

    def _round_done(self, sy) -> None:
        plans = self._busy.get(sy)
        if plans is None:
            sy.take(0)  # (a stray wake-up: drain it)
            return
        errs = sy.take(sum(n for _, _, n in plans))
        if errs is None:
            return
        del self._busy[sy]
        self._idle.append(sy)
        finish_round(plans, errs, skip_closed=True)
        self._answer()
        self._start()

    def _answer(self) -> None:
        keep, done = [], []
        for w in self._waiters:
            ds, end, fn, reg = w
            err = self._rounds.outcome(ds, end, reg)
            if err is WAIT and self._closed:
                err = LogClosedError(f"{ds.topic}/{ds.index}: the producer's loop "
                                     f"closed before offset {end} was known durable")
            if err is WAIT:
                keep.append(w)
                if ds.durable_end < end and not self._busy:
                    self._rounds.want(ds, end)
            else:
                done.append((fn, err))
        self._waiters = keep
        for fn, err in done:
            try:
                fn(err)
            except Exception as e:  # one callback's bug must not strand the others
                self.loop.call_exception_handler({"message": "unstoppable: durability callback failed",
                                                  "exception": e})

    def close(self) -> None:
        """Finish the rounds in flight (waiting for them: milliseconds),
        answer every waiter (those not durable by then get LogClosedError)
        and stop the threads."""
        if self._closed:
            return
        self._closed = True  # no new rounds
        while self._busy:
            ready, _, _ = select.select(list(self._busy), [], [])
            for sy in ready:
                self._round_done(sy)
        for sy in self._idle:
            if not self.loop.is_closed():
                self.loop.remove_reader(sy.fileno())
            sy.close()
        self._idle.clear()
        self._answer()


# ---------------------------------------------------------------------------
# The flusher

class Flusher:
    """One background thread per log that fsyncs segments sealed by a roll and
    moves their partition's recovery checkpoint past them, so recovery after a
    power loss never has to rescan more than about the active segment."""

    def __init__(self):
        self._reset()
        _THREAD_OWNERS.add(self)

    def _reset(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, partition) -> None:
        """Have ``partition.flush()`` called on the flusher thread (skipped once it is closed)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unstoppable-flusher",
                                                daemon=True)
                self._thread.start()
        self._q.put(partition)

    def _run(self) -> None:
        while True:
            p = self._q.get()
            if p is None:
                return
            try:
                if not p.closed:
                    p.flush()
            except Exception:
                # The partition records fsync failures itself (and refuses
                # further writes); a closed partition needs nothing.
                pass

    def stop(self) -> None:
        """Let the thread finish what was submitted, and end it."""
        with self._lock:
            t, self._thread = self._thread, None
        if t is not None:
            self._q.put(None)
            t.join()


# Objects that own a thread and its lock: a forked child has none of the
# parent's threads, and a lock one of them held at the fork would never be
# released there, so each starts over (``_reset``) in the child. The parent's
# pending requests belong to its own event loops and stay with it.
_THREAD_OWNERS: "weakref.WeakSet" = weakref.WeakSet()


def _reset_thread_owners_in_child() -> None:
    for owner in list(_THREAD_OWNERS):
        owner._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_thread_owners_in_child)
