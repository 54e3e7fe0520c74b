"""Key and value (de)serializers on the Producer and Consumer: callables or
codec objects (with encode/decode), tombstones untouched, and a record that
does not decode stops the stream exactly at itself."""
import json

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP

from client_util import make_log, run


class Json:
    """A codec object: the shape unstoppable.codecs codecs have."""

    def encode(self, obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def decode(self, data):
        try:
            return json.loads(bytes(data))
        except ValueError as e:
            raise us.errors.InvalidRecordError(f"not JSON: {e}") from None


def test_serializers_round_trip_and_tombstones_pass_through(tmp_path):
    log = make_log(tmp_path / "log", partitions=3)

    async def main():
        async with us.Producer(log, "t", value_serializer=Json(), key_serializer=str.encode) as p:
            m1 = await p.send_and_wait({"seat": "12A", "n": 1}, key="booking-1")
            await p.send_and_wait(None, key="booking-1")           # a tombstone stays None
            m3 = await p.send_and_wait([1, 2, 3])
        raw = log.topic("t").partition(m1.partition).read(m1.offset, 2)
        assert bytes(raw[0].value) == b'{"seat":"12A","n":1}' and raw[1].value is None
        assert m1.partition == us.DefaultPartitioner()(b"booking-1", 3)  # partitioned on the bytes
        out = {}
        async with us.Consumer(log, "t", value_deserializer=Json(),
                               key_deserializer=lambda b: bytes(b).decode()) as c:
            while sum(map(len, out.values())) < 3:
                for tp, recs in (await c.getmany(max_records=10)).items():
                    out.setdefault(tp, []).extend(recs)
        return m1, m3, out

    m1, m3, out = run(main())
    recs = out[TP("t", m1.partition)]
    first = next(r for r in recs if r.offset == m1.offset)
    assert isinstance(first, us.ConsumerRecord)
    assert (first.key, first.value, first.topic, first.headers) == ("booking-1", {"seat": "12A", "n": 1}, "t", [])
    assert next(r for r in recs if r.offset == m1.offset + 1).value is None
    assert out[TP("t", m3.partition)][-1].value == [1, 2, 3]
    log.close()


def test_a_record_that_does_not_decode_stops_the_stream_at_itself(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    part = log.topic("t").partition(0)
    part.append([b'{"i":0}', b'{"i":1}', b"{broken", b'{"i":3}'])
    tp = TP("t", 0)

    async def main():
        async with us.Consumer(log, "t", value_deserializer=Json()) as c:
            got = await c.getmany(max_records=10)
            assert [r.value for r in got[tp]] == [{"i": 0}, {"i": 1}]
            with pytest.raises(us.errors.InvalidRecordError) as ei:
                await c.getmany(max_records=10)
            assert "offset 2" in "".join(getattr(ei.value, "__notes__", []))
            assert c.position(tp) == 2
            c.seek(tp, 3)
            rest = [r async for r in _take(c, 1)]
            assert [r.value for r in rest] == [{"i": 3}]

    async def _take(c, n):
        async for r in c:
            yield r
            n -= 1
            if n == 0:
                return

    run(main())
    log.close()


def test_serializer_arguments_are_checked(tmp_path):
    log = make_log(tmp_path / "log")
    with pytest.raises(TypeError, match="value_serializer"):
        us.Producer(log, "t", value_serializer=42)
    with pytest.raises(TypeError, match="key_deserializer"):
        us.Consumer(log, "t", key_deserializer="utf-8")
    log.close()
