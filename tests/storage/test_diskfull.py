"""A full disk during appends (EFBIG under RLIMIT_FSIZE): a clear error, nothing
torn, acknowledged data readable, and appends work again once there is room."""
import json
import os
import subprocess
import sys
import textwrap

import unstoppable as us

CHILD = textwrap.dedent("""
    import json, resource, sys
    import unstoppable as us
    from unstoppable.errors import DiskFullError
    limit = int(sys.argv[2])
    log = us.Log(sys.argv[1])
    p = log.create_topic("t", segment_bytes=1 << 20).partition(0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    acked, err = [], None
    i = 0
    while True:
        recs = [b"%06d-%d" % (i, j) + b"#" * 300 for j in range(1 + i % 4)]
        try:
            base = p.append(recs, acks=sys.argv[3])
        except DiskFullError as e:
            err = (type(e).__name__, e.errno, str(e))
            break
        acked.append((base, [r.decode() for r in recs]))
        i += 1
    # Still consistent and readable in the same process after the failure.
    assert p.end_offset == acked[-1][0] + len(acked[-1][1])
    got = [bytes(r.value).decode() for r in p.read(0, max_records=100000)]
    assert got == [v for _, vs in acked for v in vs]
    failed_again = False
    try:
        p.append([b"x" * 100000])
    except DiskFullError:
        failed_again = True
    print(json.dumps({"acked": acked, "err": err, "failed_again": failed_again}))
    log.close()
""")


def test_efbig_is_a_clean_error(tmp_path):
    for acks in ("written", "fsync"):
        d = tmp_path / acks
        out = subprocess.run([sys.executable, "-c", CHILD, str(d), str(64 * 1024), acks],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout)
        name, errno_, msg = res["err"]
        assert name == "DiskFullError" and errno_ == 27 and "no space" in msg  # EFBIG
        assert res["failed_again"]
        acked = res["acked"]
        assert len(acked) > 10
        with us.Log(d) as log:
            p = log.topic("t").partition(0)
            assert p.recovery.truncated_bytes == 0  # the failed append left nothing behind
            end = acked[-1][0] + len(acked[-1][1])
            assert p.end_offset == end
            vals = [bytes(r.value).decode() for r in p.read(0, max_records=100000)]
            assert vals == [v for _, vs in acked for v in vs]
            assert p.append([b"room again"]) == end
            assert log.verify().ok


STREAM_CHILD = textwrap.dedent("""
    import json, resource, sys
    import unstoppable as us
    from unstoppable.errors import DiskFullError
    log = us.Log(sys.argv[1])
    p = log.create_topic("t", segment_bytes=1 << 16).partition(0)
    p.append([b"before"] * 10)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    try:
        p.append([b"%06d" % i + b"!" * 50 for i in range(50_000)])   # pipelined, ~3 MiB
        print(json.dumps({"err": None}))
    except DiskFullError as e:
        print(json.dumps({"err": e.errno, "end": p.end_offset,
                          "vals": [bytes(r.value).decode() for r in p.read(0)]}))
    log.close()
""")


def test_efbig_in_a_pipelined_append_undoes_all_of_it(tmp_path):
    d = tmp_path / "s"
    out = subprocess.run([sys.executable, "-c", STREAM_CHILD, str(d)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["err"] == 27 and res["end"] == 10 and res["vals"] == ["before"] * 10
    with us.Log(d) as log:
        p = log.topic("t").partition(0)
        assert p.end_offset == 10
        assert [f for f in os.listdir(p.path) if f.endswith(".log")] == ["00000000000000000000.log"]
        assert p.append([b"x"] * 9000) == 10
        assert log.verify().ok
