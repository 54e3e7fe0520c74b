"""to_batches overtaken by retention: on_retention="raise" (the default)
names the deleted range; "clamp" goes on from the new start."""
import pytest

import unstoppable as us
from unstoppable.errors import OffsetOutOfRangeError

pa = pytest.importorskip("pyarrow")


def overtake(tmp_path, **kw):
    """A stream reads its first batch; then enough is appended that
    retention deletes the records it has not read yet. Returns the reader,
    the first batch and the partition."""
    log = us.Log(tmp_path / "log")
    t = log.create_topic("t", segment_bytes=4096, max_batch_bytes=1024, retention_bytes=8192)
    p = t.partition(0)
    for i in range(400):
        p.append([b"r%05d" % i + b"." * 40])
    start = p.start_offset
    assert start > 0  # retention is at work
    reader = t.to_batches(batch_bytes=1024, **kw)
    first = reader.read_next_batch()
    assert first.column("offset")[0].as_py() == start
    i = 400
    while p.start_offset <= first.column("offset")[-1].as_py() + 1:
        p.append([b"r%05d" % i + b"." * 40])  # retention runs at each roll
        i += 1
    # Overtaken: the next offset the stream wants is gone, its end (400) is not.
    assert first.column("offset")[-1].as_py() + 1 < p.start_offset < 400
    return log, reader, first, p


def test_default_raises_naming_the_deleted_range(tmp_path):
    log, reader, first, p = overtake(tmp_path)
    nxt = first.column("offset")[-1].as_py() + 1
    with pytest.raises(OffsetOutOfRangeError, match=rf"deleted offsets {nxt} \.\. "
                                                   rf"{p.start_offset - 1} of t/0.*on_retention='clamp'"):
        while True:
            reader.read_next_batch()
    log.close()


def test_clamp_goes_on_from_the_new_start(tmp_path):
    log, reader, first, p = overtake(tmp_path, on_retention="clamp")
    end_at_call = 400  # the stream's end was taken when to_batches was called
    rest = pa.Table.from_batches(list(reader), schema=reader.schema)
    offsets = first.column("offset").to_pylist() + rest.column("offset").to_pylist()
    assert offsets == sorted(offsets)
    new_start = p.start_offset
    skipped = [o for o in range(offsets[0], end_at_call) if o not in offsets]
    assert skipped == list(range(first.column("offset")[-1].as_py() + 1, new_start))
    assert offsets[-1] == end_at_call - 1
    values = first.column("value").to_pylist() + rest.column("value").to_pylist()
    assert all(v == b"r%05d" % o + b"." * 40 for o, v in zip(offsets, values))
    log.close()


def test_bad_option_is_refused(tmp_path):
    with us.Log(tmp_path / "log") as log:
        t = log.create_topic("t")
        with pytest.raises(ValueError, match="on_retention must be one of"):
            t.to_batches(on_retention="skip")
