"""Timestamps are refused at append past 9999-12-31T23:59:59.999Z
(MAX_TIMESTAMP), the last time Arrow and Python datetimes convert, so
everything in a log exports and converts. Every append path says so."""
import asyncio
import datetime

import pytest

import unstoppable as us
from unstoppable._core.batch import MAX_TIMESTAMP
from unstoppable.errors import InvalidRecordError

pa = pytest.importorskip("pyarrow")


def test_max_timestamp_is_the_last_millisecond_of_year_9999():
    last = datetime.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=datetime.timezone.utc)
    assert MAX_TIMESTAMP == int(last.timestamp() * 1000)


def test_the_largest_timestamp_exports_and_converts(tmp_path):
    with us.Log(tmp_path / "log") as log:
        p = log.create_topic("t").partition(0)
        p.append([b"a", (None, b"b", None, MAX_TIMESTAMP)], timestamp=MAX_TIMESTAMP - 1)
        ts = p.read(0)[1].timestamp
        assert ts == MAX_TIMESTAMP
        col = log.topic("t").to_arrow().column("timestamp")
        assert col.to_pylist()[-1] == datetime.datetime(9999, 12, 31, 23, 59, 59, 999000)


@pytest.mark.parametrize("how", ["default", "per_record", "producer", "arrow"])
def test_a_later_timestamp_is_refused_with_the_range(tmp_path, how):
    late = MAX_TIMESTAMP + 1
    with us.Log(tmp_path / "log") as log:
        t = log.create_topic("t")
        p = t.partition(0)
        with pytest.raises(InvalidRecordError, match=r"253402300799999.*9999-12-31"):
            if how == "default":
                p.append([b"x"], timestamp=late)
            elif how == "per_record":
                p.append([(None, b"x", None, late)])
            elif how == "producer":
                async def main():
                    async with us.Producer(log, "t") as prod:
                        await prod.send(b"x", timestamp=late)
                asyncio.run(main())
            else:
                t.append_arrow(pa.table({"value": pa.array([b"x"]), "ts": pa.array([late])}),
                               timestamp="ts")
        assert p.end_offset == 0  # nothing accepted
