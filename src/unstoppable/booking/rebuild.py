"""The booking read model rebuilt from the input topic: every partition
replayed from offset 0 through the same decisions as the workers
(:func:`unstoppable.booking.service.decide_run`, building no outcomes), the
final rows bulk-loaded into a fresh database, in one process or split over
forked helpers (one per CPU), each writing its share of the partitions. The
result compares identical to a live read model (``diff_snapshots``).
"""
from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import os
import shutil

import unstoppable as us
from unstoppable.booking import deadletters as dl
from unstoppable.booking.logio import LogReader
from unstoppable.booking.partitionstore import PartitionStore
from unstoppable.booking.readmodel import (
    ReadModel,
    connect,
    create_indexes,
    partition_path,
)
from unstoppable.booking.service import (
    ServiceConfig,
    _unlink_db,
    apply_run,
)

__all__ = ["rebuild", "append_share", "PARALLEL_REBUILD_MIN"]


#: Fewer input records than this are rebuilt in one process: a forked
#: helper costs more than it saves on a small log.
PARALLEL_REBUILD_MIN = 50_000


async def rebuild(log, cfg: ServiceConfig, db_path, *, progress=None, chunk: int = 20000,
                  processes: int | None = None) -> ReadModel:
    """await rebuild(log, cfg, db_path, *, progress=None, chunk=20000, processes=None) -> ReadModel

    Replay the input topic from offset 0 into a fresh read model at
    ``db_path`` (which must not exist), with the same state machine, the same
    batch path as the workers (:func:`apply_run`) and the same decisions about
    dead letters (taken from the dead-letter topic), and return it. It must
    equal the live read model once that has caught up: that is the
    event-sourcing check. The state is decided in memory, then bulk-loaded
    into a fresh file (no journal, no sync, rows in key order, secondary
    indexes built at the end) next to ``db_path``, which is renamed to
    ``db_path`` once complete: a crash leaves no half-built read model there.
    ``log`` is a ``us.Log`` or a JetStreamLog; records are read through the
    backend interface. ``progress(done, total)`` is called as records are replayed.

    Partitions are independent, so they are decided in ``processes``
    processes (default: one per CPU, at most one per partition; one for
    fewer than ``PARALLEL_REBUILD_MIN`` records): this process reads the
    records of the other processes' partitions (contiguous ranges of
    partitions, balanced by record count), forks them, decides its own
    share. In the ``"partition"`` layout (``cfg.db_layout``, the default)
    each process bulk-loads each of its partitions into that partition's
    file of the new directory, and nothing is appended; in the ``"shared"``
    layout each bulk-loads its share into a file of its own, and the shares
    are then appended into the read model in partition order (their rowids
    ``partition << 40 | n`` ascend, so every share appends).
    """
    db_path = str(db_path)
    if os.path.exists(db_path):
        raise FileExistsError(f"{db_path} exists; rebuild writes a fresh read model")
    if cfg.db_layout == "partition":
        return await _rebuild_partitioned(log, cfg, db_path, progress, chunk, processes)
    tmp = db_path + ".building"
    async with LogReader(log) as reader:
        n, dead, ranges, sizes, shares = await _plan(reader, log, cfg, processes)
        total = sum(sizes)
        files = [tmp] + [f"{tmp}.{i}" for i in range(1, len(shares))]
        for f in files:
            _unlink_db(f)
        # The collector would walk the growing state again and again (see
        # _freeze_survivors); the replay makes no cyclic garbage worth it.
        was_enabled = gc.isenabled()
        gc.disable()
        helpers: list = []
        db = None
        offsets: dict = {}
        try:
            for i, share in enumerate(shares[1:], 1):
                runs = await _read_share(reader, cfg, share, ranges, chunk, offsets)
                helpers.append(_start_helper(cfg, n, runs, dead, files[i], share))
                del runs
            db = connect(tmp, bulk=True)
            done = await _rebuild_own(reader, db, cfg, n, shares[0], ranges, dead, chunk, offsets,
                                      progress, total)
            for i, (proc, rx, share) in enumerate(helpers, 1):
                result = await asyncio.get_running_loop().run_in_executor(None, _receive, rx, proc)
                if result is not None:
                    raise result
                append_share(db, files[i])
                done += sum(sizes[p] for p in share)
                if progress is not None:
                    progress(done, total)
            create_indexes(db)
        except BaseException:
            _abandon(helpers, db, files)
            raise
        finally:
            if was_enabled:
                gc.enable()
    db.close()
    for f in files[1:]:
        _unlink_db(f)
    os.replace(tmp, db_path)
    return ReadModel(connect(db_path), outcomes_topic=cfg.outcomes_topic)


async def _rebuild_partitioned(log, cfg: ServiceConfig, db_path: str, progress, chunk: int,
                               processes: int | None) -> ReadModel:
    """:func:`rebuild` into the "partition" layout: a directory of one file
    per partition. Each process (this one and its forked helpers) decides
    its share of the partitions and bulk-loads each partition's rows and
    offset into that partition's file; nothing is appended afterwards. The
    directory is built as ``db_path + ".building"`` and renamed when whole."""
    tmp = db_path + ".building"
    shutil.rmtree(tmp, ignore_errors=True)      # what a crashed rebuild left
    async with LogReader(log) as reader:
        n, dead, ranges, sizes, shares = await _plan(reader, log, cfg, processes)
        total = sum(sizes)
        os.makedirs(tmp)
        was_enabled = gc.isenabled()
        gc.disable()                # see rebuild()
        helpers: list = []
        offsets: dict = {}
        try:
            for share in shares[1:]:
                runs = await _read_share(reader, cfg, share, ranges, chunk, offsets)
                helpers.append(_start_helper(cfg, n, runs, dead, tmp, share, offsets,
                                             target=_rebuild_parts))
                del runs
            st = PartitionStore(None, outcomes_topic=cfg.outcomes_topic, outbox=False, bulk=True)
            done = await _decide_share(reader, st, cfg, n, shares[0], ranges, dead, chunk, offsets,
                                       progress, total)
            _write_parts(st, cfg, tmp, shares[0], offsets)
            del st
            for proc, rx, share in helpers:
                result = await asyncio.get_running_loop().run_in_executor(None, _receive, rx, proc)
                if result is not None:
                    raise result
                done += sum(sizes[p] for p in share)
                if progress is not None:
                    progress(done, total)
        except BaseException:
            _abandon(helpers, None, [])
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if was_enabled:
                gc.enable()
    os.replace(tmp, db_path)
    return ReadModel(connect(db_path), outcomes_topic=cfg.outcomes_topic)


def _write_parts(st: PartitionStore, cfg: ServiceConfig, dirpath: str, partitions: list,
                 offsets: dict) -> None:
    """Bulk-load each of ``partitions``' final rows and committed offset
    (decided into ``st``) into its own file of the directory ``dirpath``."""
    for p in partitions:
        db = connect(partition_path(dirpath, p), bulk=True)
        try:
            offset_store = us.SQLiteOffsetStore(db)      # (creates its table: not inside the BEGIN)
            st.db = db
            db.execute("BEGIN")
            st.write_all([p])
            offset_store.save({tp: off for tp, off in offsets.items() if tp.partition == p},
                              group=cfg.group)
            db.execute("COMMIT")
            create_indexes(db)
        finally:
            db.close()
    st.db = None


def _rebuild_parts(cfg: ServiceConfig, n: int, runs: list, dead: dict, dirpath: str, share: list,
                   offsets: dict, tx) -> None:
    """A rebuild helper of the "partition" layout (forked): decide ``runs``
    and bulk-load each partition of ``share`` into its file in ``dirpath``;
    send None, or the exception that stopped it, down ``tx``."""
    try:
        st = PartitionStore(None, outcomes_topic=cfg.outcomes_topic, outbox=False, bulk=True)
        for p, recs in runs:
            _decide_chunk(st, cfg, p, n, recs, dead)
        _write_parts(st, cfg, dirpath, share, offsets)
        result = None
    except BaseException as e:      # noqa: BLE001 - sent to the parent, which raises it
        result = e
    _send_result(tx, result)


async def _plan(reader, log, cfg: ServiceConfig, processes: int | None) -> tuple:
    """What a rebuild replays and how it splits the work: ``(partitions,
    dead letters by (partition, offset), each partition's (start, end),
    sizes, shares)``; ``processes`` None is one per CPU for a log of at
    least PARALLEL_REBUILD_MIN records, else one."""
    n = await reader.partitions(cfg.topic)
    dead = {(d.origin_partition, d.origin_offset): d.error
            for d in await dl.read_dead_letters(log, cfg.dlq_topic, missing_ok=True)
            if d.origin_topic == cfg.topic}
    ranges = await reader.ranges(cfg.topic)
    sizes = [e - s for s, e in ranges]
    if processes is None:
        processes = (os.cpu_count() or 1) if sum(sizes) >= PARALLEL_REBUILD_MIN else 1
    return n, dead, ranges, sizes, _shares(sizes, max(1, min(int(processes), n)))


async def _read_share(reader, cfg: ServiceConfig, share: list, ranges: list, chunk: int,
                      offsets: dict) -> list:
    """A helper's records, read here (the helper uses no log): ``[(partition, records)]``."""
    runs = []
    for p in share:
        async for recs in reader.chunks(cfg.topic, p, *ranges[p], chunk):
            runs.append((p, recs))
            offsets[us.TopicPartition(cfg.topic, p)] = recs[-1].offset + 1
    return runs


def _start_helper(cfg: ServiceConfig, n: int, runs: list, dead: dict, path: str, share: list,
                  offsets: dict | None = None, target=None):
    """Fork a rebuild helper for ``runs``; returns ``(process, receiving end, share)``."""
    ctx = mp.get_context("fork")
    rx, tx = ctx.Pipe(duplex=False)
    if target is None:
        args: tuple = (cfg, n, runs, dead, path, tx)
        target = _rebuild_share
    else:
        args = (cfg, n, runs, dead, path, share, offsets, tx)
    proc = ctx.Process(target=target, args=args,
                       name=f"rebuild-{os.path.basename(path)}")
    proc.start()
    tx.close()
    return proc, rx, share


async def _decide_share(reader, st: PartitionStore, cfg: ServiceConfig, n: int, share: list,
                        ranges: list, dead: dict, chunk: int, offsets: dict, progress,
                        total: int) -> int:
    """Read and decide the partitions of ``share`` into ``st`` in this
    process, noting each one's next offset in ``offsets``; returns how many
    records it replayed."""
    done = 0
    for p in share:
        async for recs in reader.chunks(cfg.topic, p, *ranges[p], chunk):
            _decide_chunk(st, cfg, p, n, recs, dead)
            offsets[us.TopicPartition(cfg.topic, p)] = recs[-1].offset + 1
            done += len(recs)
            if progress is not None:
                progress(done, total)
    return done


async def _rebuild_own(reader, db, cfg: ServiceConfig, n: int, share: list, ranges: list,
                       dead: dict, chunk: int, offsets: dict, progress, total: int) -> int:
    """Decide this process's share, then bulk-load it and every offset into
    ``db``; returns how many records it replayed."""
    st = PartitionStore(db, outcomes_topic=cfg.outcomes_topic, outbox=False, bulk=True)
    done = await _decide_share(reader, st, cfg, n, share, ranges, dead, chunk, offsets, progress,
                               total)
    offset_store = us.SQLiteOffsetStore(db)      # (creates its table: not inside the BEGIN)
    db.execute("BEGIN")
    st.write_all()
    offset_store.save(offsets, group=cfg.group)
    db.execute("COMMIT")
    return done


def _abandon(helpers: list, db, files: list) -> None:
    """A failed rebuild: stop the helpers, remove every file it made."""
    for proc, rx, _share in helpers:
        if proc.is_alive():
            proc.kill()
        proc.join()
        rx.close()
    if db is not None:
        db.close()
    for f in files:
        _unlink_db(f)


def _shares(sizes: list, k: int) -> list:
    """Partitions ``0..len(sizes)-1`` cut into ``k`` contiguous ranges of
    about equal record counts (none empty when there are partitions for it)."""
    n, total = len(sizes), sum(sizes)
    out, cur, acc = [], [], 0
    for p, size in enumerate(sizes):
        cur.append(p)
        acc += size
        left_parts, left_shares = n - p - 1, k - len(out) - 1
        if left_shares > 0 and (acc >= total * (len(out) + 1) / k or left_parts == left_shares):
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _decide_chunk(st: PartitionStore, cfg: ServiceConfig, p: int, n: int, recs: list,
                  dead: dict) -> None:
    try:
        apply_run(st, cfg.topic, p, n, recs, cfg.ttl_ms, dead=dead)
    except us.RecordFailed as f:
        raise f.cause from None    # the live workers would have dead-lettered it


def _rebuild_share(cfg: ServiceConfig, n: int, runs: list, dead: dict, path: str, tx) -> None:
    """A rebuild helper (forked): decide ``runs`` and bulk-load them into
    ``path``; send None, or the exception that stopped it, down ``tx``."""
    try:
        db = connect(path, bulk=True)
        st = PartitionStore(db, outcomes_topic=cfg.outcomes_topic, outbox=False, bulk=True)
        for p, recs in runs:
            _decide_chunk(st, cfg, p, n, recs, dead)
        db.execute("BEGIN")
        st.write_all()
        db.execute("COMMIT")
        db.close()
        result = None
    except BaseException as e:      # noqa: BLE001 - sent to the parent, which raises it
        result = e
    _send_result(tx, result)


def _send_result(tx, result) -> None:
    """A helper's last act: send ``result`` to the parent, and exit."""
    try:
        tx.send(result)
    except Exception as e:          # an exception that does not pickle
        tx.send(RuntimeError(f"rebuild helper failed: {type(result).__name__}: {result} ({e})"))
    tx.close()
    os._exit(0)


def _receive(rx, proc):
    """The result a rebuild helper sent (None: done), or an error saying it died."""
    try:
        result = rx.recv()
    except EOFError:
        proc.join()
        return RuntimeError(f"rebuild helper {proc.name} died (exit code {proc.exitcode}) "
                            "before it finished")
    finally:
        rx.close()
    proc.join()
    return result


#: The tables a rebuild share holds, appended in this order.
_SHARE_TABLES = ("seats", "bookings", "booking_users", "timers", "stats", "dead_letters")


def append_share(db, path: str) -> None:
    """Append the rows of the bulk-loaded read model at ``path`` (a rebuild
    share: partitions of its own) into ``db``, in one transaction."""
    db.execute("ATTACH DATABASE ? AS share", (path,))
    try:
        db.execute("BEGIN")
        for t in _SHARE_TABLES:
            if t in ("seats", "bookings"):      # rowid tables: keep each row's rowid
                cols = ", ".join(r[1] for r in db.execute(f"PRAGMA share.table_info({t})"))
                db.execute(f"INSERT INTO main.{t} (rowid, {cols}) SELECT rowid, {cols} "
                           f"FROM share.{t} ORDER BY rowid")
            else:
                db.execute(f"INSERT INTO main.{t} SELECT * FROM share.{t}")
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.execute("DETACH DATABASE share")
