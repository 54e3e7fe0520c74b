"""One small test per bug the reliability suite found, each failing on the
code before its fix (the commit that added it says what changed)."""
from __future__ import annotations

import os

import unstoppable as us


def _fill(p, n, per=3):
    for i in range(n):
        p.append([b"v%d-%d" % (i, j) for j in range(per)], timestamp=1000 + i)


def test_active_index_lost_in_the_same_boot_is_rebuilt_not_zero_filled(tmp_path):
    """Tail recovery used to ftruncate a missing (recreated empty) or cut
    active index up to the head's entry count, so zeroed entries counted as
    real ones: verify() reported the log corrupt from then on."""
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", index_interval_bytes=64).partition(0)
    _fill(p, 40)
    st = p._head.read()
    assert st.oi_count > 3 and st.ti_count > 3
    stem = os.path.join(p.path, f"{st.active_base:020d}")
    # A crashed writer's process is gone; something removed one index and cut the other.
    os.unlink(stem + ".index")
    os.truncate(stem + ".timeindex", 16)
    log2 = us.Log(tmp_path / "l")
    q = log2.topic("t").partition(0)
    assert q.end_offset == 120
    rep = log2.verify()
    assert rep.ok, rep.problems
    assert os.path.getsize(stem + ".index") == st.oi_count * 8   # rebuilt, same entries
    assert q.offset_for_time(1020) == 60
    assert [bytes(r.value) for r in q.read(90, max_records=3)] == [b"v30-0", b"v30-1", b"v30-2"]
    log2.close()
    log.close()
