"""Value codecs (unstoppable.codecs): round trips, clear errors on bad
input, lookup by name, and use as the Producer's and Consumer's serializers."""
import asyncio

import pytest

import unstoppable as us
from unstoppable import codecs
from unstoppable.booking.booking_pb2 import BookingEvent, SeatReservationRequested


def test_round_trips():
    assert codecs.BytesCodec().decode(memoryview(codecs.BytesCodec().encode(b"ab"))) == b"ab"
    assert codecs.BytesCodec().encode("é") == "é".encode()
    assert codecs.StrCodec().decode(codecs.StrCodec().encode("sèat")) == "sèat"
    doc = {"seat": "A-1", "n": [1, 2.5, None, True], "u": "ü"}
    j = codecs.JsonCodec()
    assert j.decode(j.encode(doc)) == doc and j.encode(doc) == '{"seat":"A-1","n":[1,2.5,null,true],"u":"ü"}'.encode()
    p = codecs.ProtobufCodec(BookingEvent)
    ev = BookingEvent(event_id="e", seat_reservation_requested=SeatReservationRequested(
        booking_id="b", user_id="u", seat_id="s"))
    assert p.decode(p.encode(ev)) == ev
    assert p.encode(ev) == p.encode(p.decode(p.encode(ev)))            # deterministic bytes
    assert p.decode(p.encode({"event_id": "x"})).event_id == "x"
    assert p.from_json(p.to_dict(ev)) == ev


def test_errors_are_clear():
    with pytest.raises(us.errors.ValueDecodeError, match="not valid JSON"):
        codecs.JsonCodec().decode(b"{nope")
    with pytest.raises(us.errors.ValueDecodeError, match="not UTF-8"):
        codecs.StrCodec().decode(b"\xff")
    with pytest.raises(us.errors.ValueDecodeError, match="BookingEvent"):
        codecs.ProtobufCodec(BookingEvent).decode(b"\xff\xff\xff")
    with pytest.raises(TypeError, match="JsonCodec cannot encode"):
        codecs.JsonCodec().encode(object())
    with pytest.raises(ValueError):
        codecs.JsonCodec().encode(float("nan"))
    with pytest.raises(TypeError, match="BookingEvent"):
        codecs.ProtobufCodec(BookingEvent).encode(b"raw")
    with pytest.raises(TypeError):
        codecs.BytesCodec().encode(12)
    with pytest.raises(TypeError):
        codecs.ProtobufCodec(dict)


def test_lookup_by_name():
    assert isinstance(codecs.get("json"), codecs.JsonCodec)
    assert codecs.get("booking").message_class is BookingEvent
    assert codecs.get("proto:unstoppable.booking.booking_pb2:PaymentReceived").name == \
        "proto:unstoppable.booking.PaymentReceived"
    assert codecs.get(BookingEvent).message_class is BookingEvent
    j = codecs.JsonCodec()
    assert codecs.get(j) is j
    for bad in ("yaml", "proto:", "proto:nonexistent.module:X", "proto:unstoppable.codecs:Nope"):
        with pytest.raises(ValueError):
            codecs.get(bad)
    assert isinstance(codecs.get("bytes"), codecs.Codec)


def test_codecs_plug_into_producer_and_consumer(tmp_path):
    log = us.Log(tmp_path / "log")
    log.create_topic("t", partitions=2)
    j = codecs.JsonCodec()

    async def main():
        async with us.Producer(log, "t", value_serializer=j) as p:
            await p.send_and_wait({"seat": "A"}, key=b"A")
        async with us.Consumer(log, "t", value_deserializer=j) as c:
            got = await c.getmany(timeout_ms=1000)
            return [r.value for recs in got.values() for r in recs]

    assert asyncio.run(main()) == [{"seat": "A"}]
    log.close()


def test_booking_alias_resolves_like_a_proto_spec():
    """codecs.py names the demo's message only as a proto: spec string."""
    import ast
    import unstoppable.codecs as c
    tree = ast.parse(open(c.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("unstoppable.booking") for m in imported)
    assert c.ALIASES["booking"].startswith("proto:")
    assert c.get("booking").message_class is c.get(c.ALIASES["booking"]).message_class
