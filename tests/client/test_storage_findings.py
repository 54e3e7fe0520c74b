"""Storage-layer problems found while building the client. Each was first
recorded here as a strict xfail; once fixed it stays as a regression test."""
import gc

import unstoppable as us


def test_reading_records_without_headers_allocates_no_gc_tracked_objects(tmp_path):
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t").partition(0)
        part.append([b"x" * 100] * 5000)
        gc.collect()
        gc.disable()
        try:
            before = gc.get_count()[0]
            recs = part.read(0, 5000, 1 << 24)
            grew = gc.get_count()[0] - before
        finally:
            gc.enable()
        assert len(recs) == 5000
        assert grew < 100, f"{grew} GC-tracked objects allocated to read 5,000 records"
