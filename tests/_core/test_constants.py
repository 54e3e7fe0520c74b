"""The format sizes _core exports (csrc/batch.h) bound what the encoder writes."""
from unstoppable._core.batch import (
    HEADER_SIZE,
    RECORD_MAX_OVERHEAD,
    RECORD_MAX_OVERHEAD_PLAIN,
    BatchEncoder,
)
from unstoppable._core.segment import BAD_RECORDS, OFFSET_MISMATCH
from unstoppable.errors import corrupt_from_code


def _overhead(records, ts):
    enc = BatchEncoder()
    enc.encode(records, ts)
    assert enc.batches == 1
    return enc.nbytes - HEADER_SIZE


def test_header_size_is_kafkas_61_bytes():
    enc = BatchEncoder()
    enc.encode([b""], 0)
    assert HEADER_SIZE == 61 and enc.nbytes > HEADER_SIZE


def test_record_overheads_bound_the_encoder_at_the_widest_timestamp_delta():
    # The second of two records whose timestamps are as far apart as a batch
    # allows (0 and MAX_TIMESTAMP, the year 9999): its timestamp delta takes
    # 7 varint bytes, within the 10 the overheads allow for any i64 delta.
    from unstoppable._core.batch import MAX_TIMESTAMP
    lo, hi = 0, MAX_TIMESTAMP
    value = b"v" * 200          # a 2-byte value length
    first = (None, value, [], lo)
    second = (None, value, [], hi)
    plain = _overhead([first, second], lo) - _overhead([first], lo) - len(value)
    assert 7 < plain <= RECORD_MAX_OVERHEAD_PLAIN
    key = b"k" * 200
    first = (key, value, [("h", b"x")], lo)
    second = (key, value, [("h", b"x")], hi)
    header_bytes = 1 + 1 + 1 + 1   # key length, "h", value length, b"x" (zigzag varints)
    keyed = (_overhead([first, second], lo) - _overhead([first], lo)
             - len(key) - len(value) - header_bytes)
    assert plain < keyed <= RECORD_MAX_OVERHEAD


def test_bad_records_is_the_code_of_records_that_do_not_parse():
    assert BAD_RECORDS != OFFSET_MISMATCH
    assert corrupt_from_code(BAD_RECORDS).reason == "records do not parse within the batch"
