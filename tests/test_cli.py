"""The ``unstoppable`` command line, run as real subprocesses on real logs:
good input does what it says (human and --json output); bad input gives one
line on stderr, a non-zero exit, and never a traceback."""
import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest

import unstoppable as us

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "booking"))


def cli(*args, stdin=None, log=None, ok=True, env=None, timeout=120):
    cmd = [sys.executable, "-m", "unstoppable", *args]
    if log is not None:
        cmd += ["--log", str(log)]
    e = {k: v for k, v in os.environ.items() if k != "UNSTOPPABLE_LOG"}
    e.update(env or {})
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=e)
    assert "Traceback" not in r.stderr, r.stderr
    if ok:
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def bad(*args, code=1, **kw):
    """A command that must fail with exactly one line of error."""
    r = cli(*args, ok=False, **kw)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unstoppable: error: "), r.stderr
    return lines[0]


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "log"


def test_topics_produce_consume_groups_dump_verify(logdir, tmp_path):
    assert "3 partitions" in cli("topics", "create", "t", "--partitions", "3", log=logdir).stdout
    r = cli("produce", "t", "--key-separator", ":", log=logdir, stdin="s1:a\ns2:b\ns1:c\n")
    assert "produced 3 records" in r.stderr
    r = cli("produce", "t", "--format", "json", "--key-field", "seat", "--json", log=logdir,
            stdin='{"seat": "s1", "n": 1}\n\n{"seat": "s9", "n": 2}\n')
    assert json.loads(r.stdout)["records"] == 2
    listing = json.loads(cli("topics", "list", "--json", log=logdir).stdout)
    assert listing == [{"name": "t", "partitions": 3, "records": 5}]
    desc = json.loads(cli("--json", "topics", "describe", "t", log=logdir).stdout)
    assert sum(p["end_offset"] for p in desc["partition_offsets"]) == 5
    assert "segment_bytes" in cli("topics", "describe", "t", log=logdir).stdout

    recs = [json.loads(x) for x in cli("consume", "t", "--json", log=logdir).stdout.splitlines()]
    assert sorted(r["value"] for r in recs) == sorted(['{"seat":"s1","n":1}', '{"seat":"s9","n":2}', "a", "b", "c"])
    s1 = [r for r in recs if r["key"] == "s1"]
    assert len({r["partition"] for r in s1}) == 1            # a key stays on one partition
    assert [r["value"] for r in s1][:2] == ["a", "c"]        # in order

    # A group commits what it printed, no more; groups shows lag.
    out = cli("consume", "t", "--group", "g", "-n", "2", log=logdir).stdout.splitlines()
    assert len(out) == 2
    groups = json.loads(cli("groups", "--json", log=logdir).stdout)
    assert len(groups) == 3                                   # every partition, committed or not
    assert sum(g["committed"] or 0 for g in groups) == 2 and sum(g["lag"] for g in groups) == 3
    assert "LAG" in cli("groups", "g", log=logdir).stdout
    bad("groups", "nope", log=logdir)

    tail = cli("tail", "t", "-n", "1", "--json", log=logdir).stdout.splitlines()
    assert len(tail) == 1

    dump = cli("dump", "t", "--json", log=logdir).stdout.splitlines()
    batches = [json.loads(x) for x in dump]
    assert sum(b["records"] for b in batches) == 5 and all(b["crc"].startswith("0x") for b in batches)
    assert "crc=0x" in cli("dump", "t", "--partition", "0", log=logdir).stdout + \
        cli("dump", "t", log=logdir).stdout

    rep = json.loads(cli("verify", "--json", log=logdir).stdout)
    assert rep["ok"] and rep["records"] == 5


def test_verify_fails_on_a_damaged_log(logdir):
    cli("topics", "create", "t", log=logdir)
    cli("produce", "t", log=logdir, stdin="".join(f"value {i}\n" for i in range(100)))
    seg = next(os.path.join(d, f) for d, _, fs in os.walk(logdir / "topics") for f in fs
               if f.endswith(".log"))
    with open(seg, "r+b") as f:
        f.seek(80)
        b = f.read(1)
        f.seek(80)
        f.write(bytes([b[0] ^ 0xFF]))
    r = cli("verify", log=logdir, ok=False)
    assert r.returncode == 1 and "FAILED" in r.stdout and "CRC" in r.stdout


def test_booking_events_produce_and_dump_protobuf_aware(logdir):
    from unstoppable.booking.service import ServiceConfig, create_topics
    with us.Log(logdir) as log:
        asyncio.run(create_topics(log, ServiceConfig(str(logdir), "x.db"), partitions=4))
    events = [{"event_id": "e1", "seat_reservation_requested":
               {"booking_id": "b1", "user_id": "u1", "seat_id": "A-12"}},
              {"event_id": "e2", "payment_received":
               {"booking_id": "b1", "seat_id": "A-12", "payment_id": "p1", "amount_cents": 4900}}]
    cli("produce", "bookings", "--format", "json", "--codec", "booking", log=logdir,
        stdin="".join(json.dumps(e) + "\n" for e in events))
    recs = [json.loads(x) for x in
            cli("consume", "bookings", "--codec", "booking", "--json", log=logdir).stdout.splitlines()]
    assert [r["value"]["kind"] for r in recs] == ["seat_reservation_requested", "payment_received"]
    assert {r["key"] for r in recs} == {"A-12"}               # keyed by seat automatically
    out = cli("dump", "bookings", "--codec", "booking", log=logdir).stdout
    assert '"kind":"payment_received"' in out and "crc=0x" in out
    line = bad("produce", "bookings", "--format", "json", "--codec", "booking", log=logdir,
               stdin='{"event_id": "e3", "no_such_field": 1}\n')
    assert "line 1" in line


def test_dead_letters_list_and_redrive(logdir, tmp_path):
    from booking_util import caught_up, run_service
    from unstoppable.booking import events as ev
    from unstoppable.booking.service import ServiceConfig, create_topics
    cfg = ServiceConfig(str(logdir), str(tmp_path / "rm.db"), fail_seats=("B",), backoff_ms=1,
                        max_attempts=2)
    log = us.Log(logdir)
    asyncio.run(create_topics(log, cfg, partitions=2))
    from unstoppable._core.hashing import xxh64_partition
    for seat in ("A", "B"):
        log.topic(cfg.topic).partition(xxh64_partition(seat.encode(), 2)).append(
            [(seat.encode(), ev.CODEC.encode(ev.reservation_requested("b" + seat, "u", seat)))])
    run_service(cfg, log, caught_up(log, cfg, timers=False))
    log.close()
    letters = json.loads(cli("dlq", "list", "--json", log=logdir).stdout)
    assert len(letters) == 1 and letters[0]["error"].startswith("InjectedFault")
    assert letters[0]["origin"].startswith("bookings/") and letters[0]["attempts"] == 2
    assert "InjectedFault" in cli("dlq", "list", log=logdir).stdout
    bad("dlq", "redrive", log=logdir, code=2)                    # which ones?
    bad("dlq", "redrive", "zero", log=logdir, code=2)
    bad("dlq", "redrive", "0/77", log=logdir)
    r = cli("dlq", "redrive", letters[0]["id"], "--json", log=logdir)
    assert json.loads(r.stdout)[0]["id"] == letters[0]["id"]
    assert "no dead letters" in cli("dlq", "list", log=logdir).stdout
    assert json.loads(cli("dlq", "list", "--all", "--json", log=logdir).stdout)[0]["redriven"]
    assert "0 dead letters re-driven" in cli("dlq", "redrive", "--all", log=logdir).stdout
    origin_topic, p, _ = letters[0]["origin"].split("/")
    redriven = [json.loads(x) for x in cli("consume", origin_topic, "--partition", p, "--json",
                                           log=logdir).stdout.splitlines()]
    assert redriven[-1]["headers"]["dlq.redriven_from"] == f"booking-dlq/{letters[0]['id']}"


def test_export_parquet_arrow_csv(logdir, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    cli("topics", "create", "t", "--partitions", "2", log=logdir)
    cli("produce", "t", "--partition", "0", log=logdir, stdin="".join(f"v{i}\n" for i in range(10)))
    r = cli("export", "t", "--format", "parquet", "--out", str(tmp_path / "t.parquet"),
            "--from", "3", "--to", "8", "--json", log=logdir)
    assert json.loads(r.stdout)["rows"] == 5
    tab = pq.read_table(tmp_path / "t.parquet")
    assert tab.column("offset").to_pylist() == [3, 4, 5, 6, 7]
    cli("export", "t", "--format", "arrow", "--out", str(tmp_path / "t.arrow"), log=logdir)
    with pa.memory_map(str(tmp_path / "t.arrow")) as f:
        assert pa.ipc.open_file(f).read_all().num_rows == 10
    cli("export", "t", "--format", "csv", "--out", str(tmp_path / "t.csv"),
        "--from", "2000-01-01T00:00:00", log=logdir)
    csv = pcsv.read_csv(tmp_path / "t.csv")
    assert csv.column("value").to_pylist() == [f"v{i}" for i in range(10)]
    assert "--from" in bad("export", "t", "--format", "csv", "--out", str(tmp_path / "x"),
                           "--from", "yesterday", log=logdir, code=2)
    bad("export", "t", "--format", "xml", "--out", "x", log=logdir, code=2)
    assert not os.path.exists(tmp_path / "x")


def test_bench_runs_and_reports(tmp_path):
    r = cli("bench", "--records", "20000", "--json", "--dir", str(tmp_path))
    out = json.loads(r.stdout)
    assert out["records"] == 20000 and out["produce_records_per_s"] > 0 and out["consume_records_per_s"] > 0
    assert os.listdir(tmp_path) == []                          # the temporary log is gone


def test_bad_input_gives_one_line_and_a_nonzero_exit(logdir, tmp_path):
    bad("topics", "list", log=tmp_path / "missing")                     # no such log
    bad("topics", "list", code=1)                                       # no --log at all
    (tmp_path / "notalog").mkdir()
    (tmp_path / "notalog" / "file").write_text("x")
    bad("topics", "list", log=tmp_path / "notalog")
    cli("topics", "create", "t", log=logdir)
    assert "unknown topic" in bad("consume", "nope", log=logdir)
    bad("dump", "nope", log=logdir)
    bad("produce", "nope", log=logdir, stdin="x\n")
    assert "line 2" in bad("produce", "t", "--format", "json", log=logdir, stdin='{"a": 1}\n{oops\n')
    bad("produce", "t", "--codec", "nonsense", log=logdir, stdin="x\n", code=2)
    bad("produce", "t", "--key", "k", "--key-field", "f", log=logdir, stdin="", code=2)
    bad("topics", "create", "u", "--config", "retention_bytes=lots", log=logdir, code=2)
    bad("topics", "create", "u", "--config", "colour=7", log=logdir)
    bad("topics", "create", "bad/name", log=logdir)
    bad("dump", "t", "--partition", "5", log=logdir)
    bad("consume", "t", "--bogus-flag", log=logdir, code=2)
    bad("no-such-command", code=2)
    bad(code=2)
    bad("demo", "--workers", "1", code=2)
    bad("demo", "--seats", "x", code=2)
    assert "JetStream URL" in bad("demo", "--log", str(tmp_path), code=2)
    assert "needs --log nats://" in bad("demo", "--replicas", "3", code=2)
    bad("groups", "--sqlite", str(tmp_path / "none.db"), log=logdir)


@pytest.mark.skipif(shutil.which("unstoppable") is None, reason="console script not installed")
def test_console_script_is_the_same_cli():
    r = subprocess.run(["unstoppable", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "demo" in r.stdout and "export" in r.stdout


def test_consume_follow_prints_new_records_as_they_come(logdir):
    cli("topics", "create", "t", log=logdir)
    cli("produce", "t", log=logdir, stdin="old\n")
    proc = subprocess.Popen([sys.executable, "-m", "unstoppable", "consume", "t", "-f", "--json",
                             "--log", str(logdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["value"] == "old"
        cli("produce", "t", log=logdir, stdin="new 1\nnew 2\n")
        got = [json.loads(proc.stdout.readline())["value"] for _ in range(2)]
        assert got == ["new 1", "new 2"]
    finally:
        proc.terminate()
        proc.wait(20)
    with proc:
        assert "Traceback" not in proc.stderr.read()


def test_produce_and_consume_on_a_jetstream_log(tmp_path):
    """--log nats://host:port: topics create, produce, consume and tail go to a
    real nats-server; the other commands say they need an embedded log."""
    sys.path.insert(0, os.path.join(HERE, "backends"))
    nats_servers = pytest.importorskip("nats_servers")
    pytest.importorskip("nats")
    if nats_servers.server_binary() is None:
        pytest.skip("nats-server is not installed")
    srv = nats_servers.start_single(str(tmp_path))
    try:
        asyncio.run(nats_servers.wait_for_jetstream([srv.url]))
        url = srv.url
        assert "2 partitions" in cli("topics", "create", "t", "--partitions", "2", log=url).stdout
        cli("produce", "t", "--key-separator", "=", log=url, stdin="a=1\nb=2\na=3\n")
        recs = [json.loads(x) for x in cli("consume", "t", "--json", log=url).stdout.splitlines()]
        assert sorted((r["key"], r["value"]) for r in recs) == [("a", "1"), ("a", "3"), ("b", "2")]
        assert len(cli("tail", "t", "-n", "1", log=url).stdout.splitlines()) == 1
        cli("topics", "create", "u.v", log=url)
        assert json.loads(cli("topics", "list", "--json", log=url).stdout) == [
            {"name": "t", "partitions": 2, "records": 3}, {"name": "u.v", "partitions": 1, "records": 0}]
        out = cli("topics", "list", log=url).stdout.splitlines()
        assert out[0].split() == ["TOPIC", "PARTITIONS", "RECORDS"] and out[1].split() == ["t", "2", "3"]
        desc = json.loads(cli("topics", "describe", "t", "--json", log=url).stdout)
        assert desc["name"] == "t" and desc["partitions"] == 2 and desc["records"] == 3
        assert desc["config"]["replicas"] == 1 and desc["config"]["retention_ms"] is None
        by_key = {r["key"]: r["partition"] for r in recs}
        ends = {p["partition"]: p["end_offset"] for p in desc["partition_offsets"]}
        assert ends[by_key["a"]] >= 2 and sum(ends.values()) == 3
        assert all(p["start_offset"] == 0 for p in desc["partition_offsets"])
        text = cli("topics", "describe", "t", log=url).stdout
        assert "2 partitions, 3 records" in text and "replicas = 1" in text and "END OFFSET" in text
        assert "no topic 'nope'" in bad("topics", "describe", "nope", log=url)
        assert "no dead letters" in cli("dlq", "list", "--topic", "t", log=url).stdout
        assert "embedded log" in bad("verify", log=url)
        msg = bad("consume", "nope", log=url)
        assert "no topic 'nope'" in msg
    finally:
        srv.stop()
