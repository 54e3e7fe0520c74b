"""`unstoppable demo` (the project's main job) at small scale, as a real
subprocess: worker processes, one SIGKILLed, duplicates, out-of-order and
late payments, expiries, poison records; every invariant must hold. Then
the demo's own checks are shown to fail on a forged double booking."""
import asyncio
import json
import os
import subprocess
import sys

import unstoppable as us
from unstoppable.booking import events as ev
from unstoppable.booking.demo import _check_outcomes
from unstoppable.booking.readmodel import ReadModel, connect
from unstoppable.booking.service import ServiceConfig


def test_small_demo_holds_every_invariant(tmp_path):
    d = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "unstoppable", "demo", "--seats", "300", "--users", "3000",
                        "--window", "2.5", "--ttl-ms", "500", "--dir", str(d), "--json"],
                       capture_output=True, text=True, timeout=240)
    assert "Traceback" not in r.stderr, r.stderr
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["ok"], (s["checks"], s["problems"], r.stderr)
    assert all(s["checks"].values()) and len(s["checks"]) == 6 and s["skipped"] == {}
    assert s["backend"] == "embedded"
    assert s["worker_killed"] and s["recovery_ms"] is not None
    assert "SIGKILL worker" in r.stderr and "replacement worker joins" in r.stderr
    assert s["requests"] >= 3000 and s["bookings_confirmed"] > 0 and s["rejections"] > 0
    assert s["expiries"] > 0 and s["duplicates_absorbed"] > 0 and s["payments_parked"] > 0
    assert s["dead_letters"] == s["config"]["poison"] == 6
    assert s["bookings_confirmed"] == s["seats_sold"] <= 300

    # The checks can fail: forge a second confirmation for a sold seat.
    cfg = ServiceConfig(str(d / "log"), str(d / "readmodel.db"))
    with us.Log(cfg.log_path) as log:
        db = connect(cfg.db_path)
        live = ReadModel(db)
        assert asyncio.run(_check_outcomes(log, cfg, live))["problems"] == []
        seat, booking = db.execute("SELECT seat_id, booking_id FROM seats WHERE state='booked' "
                                   "LIMIT 1").fetchone()
        forged = ev.BookingEvent(event_id="forged", booking_confirmed=ev.BookingConfirmed(
            booking_id="intruder", user_id="u", seat_id=seat))
        log.topic(cfg.outcomes_topic).partition(0).append([(seat.encode(), ev.CODEC.encode(forged))])
        got = asyncio.run(_check_outcomes(log, cfg, live))
        assert got["double_confirmed"] == [seat] and got["problems"]
        db.close()


def test_demo_refuses_a_directory_with_a_log_in_it(tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "something").write_text("x")
    r = subprocess.run([sys.executable, "-m", "unstoppable", "demo", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not empty" in r.stderr
    assert os.listdir(tmp_path / "log") == ["something"]
