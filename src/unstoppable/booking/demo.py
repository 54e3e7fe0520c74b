"""``unstoppable demo``: a concert hall sells out, on the embedded log or on
a NATS JetStream cluster (``DemoConfig.log = "nats://host:port[,...]"``).

What runs, each in its own process, on one log (an embedded log directory,
or the cluster):

* **users** (``producers`` processes): every user asks for one seat at a
  random moment of the arrival window (front seats are wanted most). Some
  pay before their request is even sent (out of order), and some events are
  delivered twice (duplicates). A few records are poison: bytes that are no
  BookingEvent, and an event on the wrong partition for its seat.
* **payment gateway**: reads the outcome topic; for most SeatHeld outcomes it
  pays after a short delay, some of them too late (after the hold expired);
  the rest never pay, so their holds expire.
* **booking service** (``workers`` processes, one consumer group): the state
  machine, the SQLite read model, outcomes, durable timers, dead letters.
  One worker is killed with SIGKILL mid-run; the survivors take its
  partitions over and a replacement joins later.

Then the demo waits until everything is handled, rebuilds the read model
from the log into a fresh database, and checks the invariants: no seat
double-booked (read model and outcome topic), exactly one terminal outcome
per booking, rebuild identical to the live read model, every record handled
or dead-lettered, exactly the poison records dead-lettered, and the log's
CRCs. It returns a summary; any failed invariant makes ``ok`` false.

Both backends run the same code: every process, the monitor, the checks and
the rebuild use the log only through Producer, Consumer and the backend's
reads (``unstoppable.booking.logio``). The differences:

* On JetStream the topics and groups of a run get a fresh prefix
  (``demo-<id>-bookings`` ...), so runs never mix on a shared cluster; the
  local directory still holds the SQLite read models and status files.
  ``DemoConfig.delete_topics`` deletes the run's topics at the end.
* The CRC check reads the embedded log's files; on JetStream it is skipped,
  and the summary says so (``summary["skipped"]``).
* A SIGKILLed worker's partitions move once its leases lapse
  (``lease_ttl``, 10 s by default) rather than at the next membership poll.
"""
from __future__ import annotations

import asyncio
import collections
import heapq
import json
import multiprocessing as mp
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field

import unstoppable as us
from unstoppable._progress import Progress
from unstoppable.booking import deadletters as dl
from unstoppable.booking import events as ev
from unstoppable.booking.logio import LogReader, close_log, is_remote, open_log
from unstoppable.booking.readmodel import ReadModel, connect, diff_snapshots, query_all
from unstoppable.booking.service import (
    ServiceConfig,
    committed_offsets,
    config_dict,
    create_topics,
    run_worker,
)
from unstoppable.booking.rebuild import rebuild

__all__ = ["DemoConfig", "run_demo", "format_summary"]

_SPAWN = mp.get_context("spawn")


@dataclass
class DemoConfig:
    """The knobs of the demo (the CLI's flags)."""
    dir: str
    seats: int = 10_000
    users: int = 100_000
    workers: int = 3
    producers: int = 2
    partitions: int = 8
    window_s: float = 25.0        # users arrive over this many seconds
    ttl_ms: int = 2000            # how long a hold waits for payment
    pay_rate: float = 0.7         # share of holds the gateway pays for
    late_pay_rate: float = 0.05   # share of those payments sent after the hold expired
    early_pay_rate: float = 0.02  # share of users who pay before their request is sent
    dup_rate: float = 0.03        # share of events delivered twice
    poison: int = 6               # records that must end up dead-lettered
    fault_rate: float = 0.001     # share of records whose first handling attempt fails
    kill: bool = True             # SIGKILL a worker mid-run (and start a replacement)
    #: The workers' Consumer option (Kafka's group.initial.rebalance.delay.ms): the
    #: workers start together and take their shares in one step.
    initial_rebalance_delay_ms: float = 1000.0
    seed: int = 42
    timeout_s: float = 300.0
    progress: bool | None = None  # None: when stderr is a terminal
    log: str | None = None        # nats://host:port[,...]: run on JetStream; None: an embedded log in dir/log
    replicas: int | None = None   # JetStream: copies of each partition (default 1)
    log_options: dict = field(default_factory=dict)  # JetStream: connection options (lease_ttl ...)
    delete_topics: bool = False   # JetStream: delete the run's topics at the end
    extra: dict = field(default_factory=dict)


def _seat(i: int) -> str:
    return f"seat-{i:05d}"


# ---------------------------------------------------------------- users

def _user_process(log_path: str, topic: str, idx: int, cfg: dict, t0: float, status: str,
                  log_options: dict) -> None:
    """One producer of user events, following a precomputed timeline."""
    rnd = random.Random(cfg["seed"] * 1000 + idx)
    seats, users, nprod = cfg["seats"], cfg["users"], cfg["producers"]
    window = cfg["window_s"]
    sched = []   # (time, seq, key, value, partition)
    seq = 0

    def add(t, key, value, partition=None):
        nonlocal seq
        sched.append((t, seq, key, value, partition))
        seq += 1
        if rnd.random() < cfg["dup_rate"]:            # delivered twice, a little later
            sched.append((t + rnd.uniform(0.01, 1.0), seq, key, value, partition))
            seq += 1

    for u in range(idx, users, nprod):
        t = rnd.uniform(0, window)
        seat = _seat(min(int(seats * rnd.random() ** 1.6), seats - 1))
        user, booking = f"user-{u:06d}", f"bk-{u:06d}"
        req = ev.CODEC.encode(ev.reservation_requested(booking, user, seat, event_id=f"req-{u}",
                                                       occurred_ms=int((t0 + t) * 1000)))
        if rnd.random() < cfg["early_pay_rate"]:
            pay = ev.CODEC.encode(ev.payment_received(booking, seat, f"pay-{u}", 4900, user,
                                                      event_id=f"pay-{u}"))
            add(t, seat.encode(), pay)
            t += rnd.uniform(0.02, 0.3)
        add(t, seat.encode(), req)
    if idx == 0:
        n = log_partitions = cfg["partitions"]
        for i in range(cfg["poison"]):
            t = rnd.uniform(0, window)
            seat = _seat(rnd.randrange(seats))
            if i % 2 == 0:
                add_value = b"\xff\x00 not a BookingEvent %d" % i
                sched.append((t, seq, seat.encode(), add_value, None))
            else:   # a valid event on a partition its seat does not live on
                home = us.DefaultPartitioner()(seat.encode(), log_partitions)
                bad = ev.CODEC.encode(ev.reservation_requested(f"bk-poison-{i}", "user-poison", seat,
                                                               event_id=f"poison-{i}"))
                sched.append((t, seq, seat.encode(), bad, (home + 1) % n))
            seq += 1
    sched.sort()

    async def main():
        log = await open_log(log_path, **log_options)
        sent = 0
        last = 0.0
        async with us.Producer(log, topic, linger_ms=2) as p:
            for t, _s, key, value, part in sched:
                now = time.time()
                delay = t0 + t - now
                if delay > 0.002:
                    await p.flush()
                    if now - last > 0.2:   # (a file written per pause took 40% of this process)
                        _status(status, {"sent": sent, "total": len(sched)})
                        last = now
                    await asyncio.sleep(delay)
                await p.send(value, key=key, partition=part)
                sent += 1
        _status(status, {"sent": sent, "total": len(sched), "done": True})
        await close_log(log)

    asyncio.run(main())


def _status(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _read_status(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------- payment gateway

def _gateway_process(log_path: str, scfg: dict, cfg: dict, status: str, group: str) -> None:
    """Pays for held seats (most of them; some too late), reading outcomes."""
    outcomes, topic, ttl = scfg["outcomes_topic"], scfg["topic"], scfg["ttl_ms"] / 1000.0

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        log = await open_log(log_path, **scfg["log_options"])
        seen: set = set()
        heap: list = []
        paid = late = 0
        async with us.Consumer(log, outcomes, group=group) as c, \
                us.Producer(log, topic, linger_ms=2, value_serializer=ev.CODEC) as p:
            last = 0.0
            while not stop.is_set():
                got = await c.getmany(timeout_ms=20)
                for recs in got.values():
                    for r in recs:
                        e = ev.CODEC.decode(r.value)
                        if e.event_id in seen or ev.kind_of(e) != "seat_held":
                            continue
                        seen.add(e.event_id)
                        h = e.seat_held
                        rnd = random.Random(f"{cfg['seed']}:{h.booking_id}")
                        if rnd.random() >= cfg["pay_rate"]:
                            continue
                        if rnd.random() < cfg["late_pay_rate"]:
                            when = time.time() + ttl + rnd.uniform(0.3, 1.0)
                            late += 1
                        else:
                            when = time.time() + rnd.uniform(0.02, 0.4) * ttl
                        heapq.heappush(heap, (when, h.booking_id, h.seat_id, h.user_id))
                now = time.time()
                while heap and heap[0][0] <= now:
                    _, booking, seat, user = heapq.heappop(heap)
                    await p.send(ev.payment_received(booking, seat, f"pay-{booking}", 4900, user,
                                                     event_id=f"gw-{booking}"), key=seat.encode())
                    paid += 1
                if now - last > 0.1:
                    await p.flush()
                    # Committed a few times a second, not per batch: a commit is
                    # an fdatasync (a restart reads at most 100 ms of outcomes
                    # again; its payments carry ids, so repeats are absorbed).
                    await c.commit()
                    positions = {str(tp.partition): c.position(tp) for tp in c.assignment()}
                    _status(status, {"pending": len(heap), "paid": paid, "late": late,
                                     "positions": positions})
                    last = now
            await p.flush()
        await close_log(log)

    asyncio.run(main())


# ------------------------------------------------------------------ demo

def _start(target, *args):
    proc = _SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def run_demo(cfg: DemoConfig, out=print) -> dict:
    """Run the demo in ``cfg.dir`` (on ``cfg.log`` when that is a NATS URL);
    returns the summary dict (``summary["ok"]`` is False when an invariant
    failed). ``out`` receives progress lines."""
    return asyncio.run(_run_demo(cfg, out))


async def _run_demo(cfg: DemoConfig, out) -> dict:
    d = os.path.abspath(cfg.dir)
    remote = cfg.log is not None
    if remote and not is_remote(cfg.log):
        raise ValueError(f"DemoConfig.log must be a nats:// or tls:// URL, got {cfg.log!r} "
                         "(the embedded demo makes its log in the demo directory)")
    if cfg.replicas is not None and not remote:
        raise ValueError("replicas are for a JetStream log (an embedded log keeps one copy)")
    os.makedirs(d, exist_ok=True)
    if remote:
        log_path = cfg.log
        prefix = f"demo-{uuid.uuid4().hex[:8]}-"    # this run's topics and groups
        log_options = dict(cfg.log_options)
    else:
        log_path = os.path.join(d, "log")
        if os.path.exists(log_path) and os.listdir(log_path):
            raise FileExistsError(f"{log_path} is not empty; the demo needs a fresh directory")
        prefix = ""
        log_options = {}
    live_db = os.path.join(d, "readmodel.db")
    rebuilt_db = os.path.join(d, "rebuilt.db")
    for f in (live_db, rebuilt_db):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f + suffix):
                os.unlink(f + suffix)
    status_dir = os.path.join(d, "status")
    os.makedirs(status_dir, exist_ok=True)
    for f in os.listdir(status_dir):     # a kept directory may hold an earlier run's
        os.unlink(os.path.join(status_dir, f))
    scfg = ServiceConfig(log_path=log_path, db_path=live_db, ttl_ms=cfg.ttl_ms,
                         fault_rate=cfg.fault_rate, topic=prefix + "bookings",
                         outcomes_topic=prefix + "booking-outcomes", dlq_topic=prefix + "booking-dlq",
                         group=prefix + "booking-service", log_options=log_options,
                         initial_rebalance_delay_ms=cfg.initial_rebalance_delay_ms)
    gateway_group = prefix + "payment-gateway"
    log = await open_log(log_path, create=True, **log_options)
    reader = LogReader(log)
    try:
        await create_topics(log, scfg, cfg.partitions, replicas=cfg.replicas)
        if scfg.db_layout == "shared":      # (the "partition" layout: the workers make the directory)
            connect(live_db).close()
        return await _run(cfg, out, d, log, reader, scfg, gateway_group, status_dir, live_db, rebuilt_db)
    finally:
        await reader.close()
        try:
            if remote and cfg.delete_topics:    # the names are this run's alone
                for t in (scfg.topic, scfg.outcomes_topic, scfg.dlq_topic):
                    try:
                        await log.delete_topic(t)
                    except us.UnknownTopicError:
                        pass                    # never created (creation failed)
        finally:
            await close_log(log)


async def _run(cfg: DemoConfig, out, d, log, reader, scfg, gateway_group, status_dir, live_db,  # noqa: C901  (the demo script, stage by stage; not yet split, see the issue note)
               rebuilt_db) -> dict:
    remote = cfg.log is not None
    log_path = scfg.log_path
    plain = {k: getattr(cfg, k) for k in ("seats", "users", "producers", "partitions", "window_s",
                                          "pay_rate", "late_pay_rate", "early_pay_rate",
                                          "dup_rate", "poison", "seed")}
    prog = Progress("demo", force=bool(cfg.progress)) if cfg.progress is not False else None
    if prog is not None:
        say = out

        def out(line):       # clear the progress line before a line of output
            prog.close()
            say(line)
    procs: list = []
    summary: dict = {"config": {**plain, "workers": cfg.workers, "ttl_ms": cfg.ttl_ms,
                                "fault_rate": cfg.fault_rate, "kill": cfg.kill}}
    if remote:
        summary["backend"] = "jetstream"
        summary["log"] = cfg.log
        summary["config"]["replicas"] = cfg.replicas or 1
        summary["topics"] = {"input": scfg.topic, "outcomes": scfg.outcomes_topic,
                             "dead_letters": scfg.dlq_topic}
        where = (f"log on JetStream at {cfg.log} (topics {scfg.topic}, {scfg.outcomes_topic}, "
                 f"{scfg.dlq_topic}; R{cfg.replicas or 1}), read model in {d}")
    else:
        summary["backend"] = "embedded"
        where = f"log in {d}"
    problems: list[str] = []
    skipped: dict = {}
    try:
        out(f"concert hall: {cfg.seats:,} seats, {cfg.users:,} users over {cfg.window_s:g} s; "
            f"{cfg.workers} booking workers, {cfg.producers} user producers, 1 payment gateway; "
            f"{where}")

        def worker(i):
            c = config_dict(scfg)
            c["status_path"] = os.path.join(status_dir, f"worker-{i}.json")
            return _start(run_worker, c)

        workers = {i: worker(i) for i in range(cfg.workers)}
        procs += workers.values()
        gw_status = os.path.join(status_dir, "gateway.json")
        gateway = _start(_gateway_process, log_path, config_dict(scfg), plain, gw_status, gateway_group)
        procs.append(gateway)
        # Let the group form before the users arrive: every worker holding
        # its share (else one worker would start alone on every partition
        # and hand them over under load); at worst, every partition owned.
        if not await _wait(lambda: _formed(status_dir, workers, cfg.partitions), 30):
            await _wait(lambda: _covered(status_dir, workers, cfg.partitions), 30)
        t0 = time.time() + 0.2
        producers = [_start(_user_process, log_path, scfg.topic, i, plain, t0,
                            os.path.join(status_dir, f"users-{i}.json"), scfg.log_options)
                     for i in range(cfg.producers)]
        procs += producers
        db = connect(live_db)
        killed_at = recovered_at = respawned_at = None
        victim = None
        survivors: dict = {}
        max_lag = 0
        samples: collections.deque = collections.deque()
        peak = 0.0
        kill_time = t0 + cfg.window_s * 0.4
        respawn_time = t0 + cfg.window_s * 0.7
        deadline = time.time() + cfg.timeout_s
        quiet = 0
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            if now > deadline:
                raise TimeoutError(f"the demo did not settle within {cfg.timeout_s:g} s")
            ends = await reader.ends(scfg.topic)
            com = committed_offsets(db, scfg.group, scfg.topic)
            lag = sum(e - com.get(p, 0) for p, e in enumerate(ends))
            max_lag = max(max_lag, lag)
            handled = sum(com.values())
            samples.append((now, handled))
            while len(samples) > 2 and now - samples[1][0] >= 1.0:
                samples.popleft()
            if now - samples[0][0] >= 1.0:
                peak = max(peak, (handled - samples[0][1]) / (now - samples[0][0]))
            if cfg.kill and victim is None and now >= kill_time:
                victim = 0
                os.kill(workers[0].pid, signal.SIGKILL)
                workers[0].join(10)
                killed_at = time.time()
                out(f"  t={killed_at - t0:5.1f}s  SIGKILL worker pid {workers[0].pid} "
                    f"(partitions {_read_status(os.path.join(status_dir, 'worker-0.json')).get('assigned')})")
                del workers[0]
                survivors = dict(workers)
                # A worker that started late under load may have written no
                # status yet (the others covered every partition without it).
                if os.path.exists(os.path.join(status_dir, "worker-0.json")):
                    os.replace(os.path.join(status_dir, "worker-0.json"),
                               os.path.join(status_dir, "worker-0.killed.json"))
            if killed_at and recovered_at is None and _covered(status_dir, survivors, cfg.partitions,
                                                               since=killed_at):
                recovered_at = time.time()
                out(f"  t={recovered_at - t0:5.1f}s  survivors own all {cfg.partitions} partitions "
                    f"again ({(recovered_at - killed_at) * 1000:.0f} ms after the kill)")
            # The replacement joins once the survivors took over (on JetStream
            # that waits for the dead worker's leases to lapse), or after 60 s.
            if (killed_at and respawned_at is None and now >= respawn_time
                    and (recovered_at is not None or now - killed_at > 60)):
                i = cfg.workers
                workers[i] = worker(i)
                procs.append(workers[i])
                respawned_at = time.time()
                out(f"  t={respawned_at - t0:5.1f}s  a replacement worker joins the group")
            sent = sum(_read_status(os.path.join(status_dir, f"users-{i}.json")).get("sent", 0)
                       for i in range(cfg.producers))
            if prog:
                prog.update(sum(com.values()), None,
                            f"events handled, {sent:,} user events sent, lag {lag:,}")
            if any(p.exitcode not in (None, 0) for p in producers):
                raise RuntimeError("a user producer failed")
            for i, w in workers.items():
                if w.exitcode is not None:
                    raise RuntimeError(f"booking worker {i} exited with {w.exitcode}")
            if gateway.exitcode is not None:
                raise RuntimeError(f"the payment gateway exited with {gateway.exitcode}")
            done = all(p.exitcode == 0 for p in producers) and lag == 0 and (respawned_at or not cfg.kill)
            if done:
                pending = sum(n for n, in query_all(db, "SELECT (SELECT COUNT(*) FROM timers) + "
                                                        "(SELECT COUNT(*) FROM outbox)"))
                gw = _read_status(gw_status)
                out_ends = await reader.ends(scfg.outcomes_topic)
                gw_pos = gw.get("positions", {})
                gw_done = gw.get("pending", 1) == 0 and all(
                    gw_pos.get(str(p), -1) >= e for p, e in enumerate(out_ends))
                done = pending == 0 and gw_done
            quiet = quiet + 1 if done else 0
            if quiet >= 3:
                break
        t_end = time.time()
        if prog:
            prog.close()
        stopped = [p for p in procs if p.exitcode is None]
        for p in stopped:
            p.terminate()
        for p in procs:
            p.join(30)
        # The work is done (every check above saw it), so a process stopped
        # here by SIGTERM before it had installed its handler (a replacement
        # worker that had only just started) exited as asked.
        bad_exit = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGKILL)
                    and not (p in stopped and p.exitcode == -signal.SIGTERM)]
        if bad_exit:
            problems.append(f"processes exited with {bad_exit}")
        metrics = [_read_status(os.path.join(status_dir, f)) for f in sorted(os.listdir(status_dir))
                   if f.startswith("worker-") and f.endswith(".json")]
        elapsed = t_end - t0
        ends = await reader.ends(scfg.topic)
        total_events = sum(ends)
        live = ReadModel(db)
        stats = live.stats()
        summary.update({
            "events": total_events,
            "seconds": round(elapsed, 2),
            "events_per_s": round(total_events / elapsed),
            "requests": stats.get("requests", 0),
            "payments": stats.get("payments", 0),
            "bookings_confirmed": stats.get("confirmed", 0),
            "rejections": stats.get("rejected", 0),
            "expiries": stats.get("expired", 0),
            "refunds": stats.get("refunds", 0),
            "payments_parked": stats.get("parked", 0),
            "late_expiries_ignored": stats.get("late_expiries", 0),
            "duplicates_absorbed": stats.get("duplicates", 0),
            "dead_letters": stats.get("dead_letters", 0),
            "retries": sum(m.get("retries", 0) for m in metrics),
            "timers_fired": sum(m.get("timers_fired", 0) for m in metrics),
            "fenced_runs": sum(m.get("fenced", 0) for m in metrics),
            "max_lag": max_lag,
            "peak_events_per_s": round(peak),
            "worker_killed": killed_at is not None,
            "recovery_ms": None if recovered_at is None else round((recovered_at - killed_at) * 1000),
            "seats_sold": sum(n for n, in query_all(live.db, "SELECT COUNT(*) FROM seats "
                                                              "WHERE state='booked'")),
        })
        gw = _read_status(gw_status)
        summary["gateway_payments"] = gw.get("paid", 0)
        summary["late_payments"] = gw.get("late", 0)

        # -- invariants
        checks = {}
        dbl = live.double_booked()
        out_check = await _check_outcomes(log, scfg, live)
        checks["no seat double-booked"] = not dbl and not out_check["double_confirmed"]
        if dbl or out_check["double_confirmed"]:
            problems.append(f"double-booked seats: {(dbl + out_check['double_confirmed'])[:5]}")
        checks["one terminal outcome per booking"] = not out_check["problems"]
        problems += out_check["problems"][:5]
        summary["outcome_events"] = out_check["events"]
        summary["outcome_duplicates_dropped"] = out_check["duplicates"]
        open_bookings = sum(n for n, in query_all(
            live.db, "SELECT COUNT(*) FROM bookings WHERE state IN ('held', 'parked')"))
        com = committed_offsets(db, scfg.group, scfg.topic)
        handled_all = all(com.get(p, 0) == e for p, e in enumerate(ends))
        checks["every record handled or dead-lettered"] = handled_all and open_bookings == 0
        if not handled_all or open_bookings:
            problems.append(f"unhandled records or open bookings ({open_bookings} open)")
        letters = await dl.read_dead_letters(log, scfg.dlq_topic)
        checks["exactly the poison records dead-lettered"] = (
            len(letters) == cfg.poison == stats.get("dead_letters", 0))
        if not checks["exactly the poison records dead-lettered"]:
            problems.append(f"{len(letters)} dead letters, {cfg.poison} poison records injected")
        if prog:
            prog.label = "rebuild"
        t = time.time()
        rebuilt = await rebuild(log, scfg, rebuilt_db, progress=prog)
        if prog:
            prog.close()
        summary["rebuild_s"] = round(time.time() - t, 2)
        summary["rebuild_events_per_s"] = round(total_events / max(summary["rebuild_s"], 1e-3))
        diff = diff_snapshots(live.snapshot(), rebuilt.snapshot())
        checks["rebuild identical"] = not diff
        problems += diff
        rebuilt.db.close()
        if remote:
            skipped["log verified (every CRC)"] = (
                "it reads an embedded log's files; JetStream servers keep their own stores")
        else:
            rep = log.verify()
            checks["log verified (every CRC)"] = rep.ok
            if not rep.ok:
                problems += [str(p) for p in rep.problems[:5]]
        summary["checks"] = checks
        summary["skipped"] = skipped
        summary["problems"] = problems
        summary["ok"] = all(checks.values()) and not problems
        db.close()
        return summary
    finally:
        if prog:
            prog.close()
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join(10)


async def _wait(pred, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def _covered(status_dir: str, workers: dict, partitions: int, since: float = 0.0) -> bool:
    """Whether the live workers' last status reports own every partition."""
    owned = set()
    for i in workers:
        s = _read_status(os.path.join(status_dir, f"worker-{i}.json"))
        if s.get("updated", 0) >= since:
            owned.update(s.get("assigned", []))
    return owned == set(range(partitions))


def _formed(status_dir: str, workers: dict, partitions: int) -> bool:
    """Whether every partition is owned and each worker holds its share
    (``partitions // workers`` at least)."""
    share = partitions // max(len(workers), 1)
    return _covered(status_dir, workers, partitions) and all(
        len(_read_status(os.path.join(status_dir, f"worker-{i}.json")).get("assigned", [])) >= share
        for i in workers)


async def _check_outcomes(log, scfg: ServiceConfig, live: ReadModel) -> dict:
    """Fold the outcome topic (dropping repeats by event id) and check it
    against the read model: one terminal outcome per booking, of the kind
    the booking's state says, and at most one confirmation per seat."""
    seen: set = set()
    terminal: dict = {}
    confirmed: dict = {}
    events = dups = 0
    async with LogReader(log) as reader:
        for p in range(await reader.partitions(scfg.outcomes_topic)):
            async for recs in reader.chunks(scfg.outcomes_topic, p):
                for r in recs:
                    e = ev.CODEC.decode(r.value)
                    events += 1
                    if e.event_id in seen:
                        dups += 1
                        continue
                    seen.add(e.event_id)
                    if ev.is_terminal(e):
                        k = (ev.seat_of(e), ev.booking_of(e))
                        terminal.setdefault(k, []).append(ev.kind_of(e))
                        if ev.kind_of(e) == "booking_confirmed":
                            confirmed.setdefault(k[0], []).append(k[1])
    expect = {"confirmed": "booking_confirmed", "rejected": "reservation_rejected",
              "expired": "hold_expired", "refunded": "payment_refunded"}
    problems = []
    rows = query_all(live.db, "SELECT seat_id, booking_id, state FROM bookings")
    for seat, booking, state in rows:
        got = terminal.get((seat, booking), [])
        if len(got) != 1 or got[0] != expect.get(state):
            problems.append(f"booking {booking} on {seat} is {state} but its terminal outcomes are {got}")
    if len(terminal) != len(rows):
        problems.append(f"{len(terminal)} bookings have terminal outcomes, the read model has {len(rows)}")
    return {"events": events, "duplicates": dups, "problems": problems,
            "double_confirmed": sorted(s for s, b in confirmed.items() if len(b) > 1)}


def format_summary(s: dict) -> str:
    """The summary as the lines the CLI prints."""
    lines = [
        f"events                {s['events']:>12,}   ({s['events_per_s']:,} events/s from the first user to the "
        f"last decision, {s['seconds']} s; peak {s['peak_events_per_s']:,}/s handled)",
        f"bookings confirmed    {s['bookings_confirmed']:>12,}   (seats sold: {s['seats_sold']:,})",
        f"rejections            {s['rejections']:>12,}",
        f"expiries              {s['expiries']:>12,}   (unpaid holds released by the durable timer)",
        f"refunds               {s['refunds']:>12,}   (late payments sent {s['late_payments']:,}; early "
        f"payments parked {s['payments_parked']:,})",
        f"duplicates absorbed   {s['duplicates_absorbed']:>12,}   (+{s['outcome_duplicates_dropped']:,} "
        "republished outcomes dropped by id)",
        f"dead letters          {s['dead_letters']:>12,}   (retried first: {s['retries']:,} retries in all)",
        f"max lag               {s['max_lag']:>12,}   records",
    ]
    if s.get("fenced_runs"):
        lines.append(f"runs fenced off       {s['fenced_runs']:>12,}   (another owner of the partition had "
                     "committed them: skipped, not applied twice)")
    if s.get("worker_killed"):
        rec = s.get("recovery_ms")
        lines.append(f"worker SIGKILLed      {'yes':>12}   (partitions owned again after "
                     f"{'?' if rec is None else f'{rec:,} ms'})")
    lines.append(f"rebuild               {s['rebuild_s']:>11}s   ({s['rebuild_events_per_s']:,} events/s "
                 "replayed into a fresh read model)")
    for name, ok in s["checks"].items():
        lines.append(f"{'OK  ' if ok else 'FAIL'}  {name}")
    for name, why in s.get("skipped", {}).items():
        lines.append(f"SKIP  {name}: {why}")
    for p in s["problems"]:
        lines.append(f"  problem: {p}")
    lines.append("OK: all invariants hold" if s["ok"] else "FAILED: an invariant does not hold")
    return "\n".join(lines)
